/*
 * podvirt-cni shim: the executable a container runtime runs from /opt/cni/bin.
 *
 * It forwards one CNI request (the CNI_* environment and the stdin config) over a unix socket
 * to the long-running podvirt CNI server and relays the answer (stdout payload, stderr text,
 * exit code). It starts in about a millisecond, so the plugin's latency is the work itself.
 * When no server listens it execs the self-contained Node bundle next to it, which runs the very
 * same handler in-process (slower, but needs no agent).
 *
 * Socket: the config's top-level "agentSocket" string, else $PODVIRT_CNI_SOCKET, else
 * /run/podvirt/cni.sock. Fallback: $PODVIRT_CNI_FALLBACK, else podvirt-cni.cjs in the directory
 * of this executable; run by $PODVIRT_CNI_NODE when set, else through its #! line.
 *
 * Wire format (request):  "PVCNI1\n" { "KEY=VALUE" NUL } NUL <stdin bytes> <EOF>
 *             (response): "PVCNI1 <exit> <stdout bytes> <stderr bytes>\n" <stdout> <stderr>
 *
 * Only protocol-level failures are reported by the shim itself (CNI error JSON on stdout).
 * Fixed-size static buffers, no heap use beyond libc's own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAGIC "PVCNI1"
#define MAX_CONFIG (1024 * 1024)
#define MAX_STDOUT (4 * 1024 * 1024)
#define MAX_STDERR (4 * 1024 * 1024)
#define MAX_ENV_ENTRY 65536
#define DEFAULT_SOCKET "/run/podvirt/cni.sock"
#define IO_TIMEOUT_SEC 300

extern char **environ;

/* One byte more than the limit, so the server can tell an oversized config apart. */
static char config[MAX_CONFIG + 1];
static size_t config_len;
static char out_buf[MAX_STDOUT];
static char version[16] = "1.1.0";

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += w;
    n -= (size_t)w;
  }
}

static void json_string(char *dst, size_t cap, const char *s) {
  size_t o = 0;
  for (; *s && o + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      dst[o++] = '\\';
      dst[o++] = (char)c;
    } else if (c < 0x20) {
      o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", c);
    } else {
      dst[o++] = (char)c;
    }
  }
  dst[o] = 0;
}

static void fail(int code, const char *msg, const char *details) {
  char m[512], d[1024], out[1800];
  json_string(m, sizeof m, msg);
  json_string(d, sizeof d, details ? details : "");
  int n = snprintf(out, sizeof out, "{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":\"%s\"%s%s%s}", version, code, m,
                   d[0] ? ",\"details\":\"" : "", d, d[0] ? "\"" : "");
  if (n > 0) write_all(1, out, (size_t)n < sizeof out ? (size_t)n : sizeof out - 1);
  exit(1);
}

static void read_config(void) {
  while (config_len < sizeof config) {
    ssize_t r = read(0, config + config_len, sizeof config - config_len);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(5, "failed to read the network config from stdin", strerror(errno));
    }
    if (r == 0) return;
    config_len += (size_t)r;
  }
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/*
 * Finds a string value of a top-level key (ASCII case-insensitive, as Go's encoding/json) without
 * a JSON parser: tracks nesting and strings, so a key inside "ipam" or a value never matches.
 * Values with escapes are not accepted (returns 0).
 */
static int top_level_string(const char *key, char *dst, size_t cap) {
  size_t klen = strlen(key), i = 0;
  int depth = 0;
  while (i < config_len) {
    char c = config[i];
    if (c == '{' || c == '[') { depth++; i++; continue; }
    if (c == '}' || c == ']') { depth--; i++; continue; }
    if (c != '"') { i++; continue; }
    size_t start = ++i;
    while (i < config_len && config[i] != '"') i += (config[i] == '\\') ? 2 : 1;
    if (i >= config_len) return 0;
    size_t end = i++;
    size_t j = i;
    while (j < config_len && is_space(config[j])) j++;
    if (j >= config_len || config[j] != ':') continue; /* a value, not a key */
    if (depth != 1 || end - start != klen || strncasecmp(config + start, key, klen) != 0) { i = j + 1; continue; }
    j++;
    while (j < config_len && is_space(config[j])) j++;
    if (j >= config_len || config[j] != '"') return 0;
    size_t vs = ++j;
    while (j < config_len && config[j] != '"' && config[j] != '\\') j++;
    if (j >= config_len || config[j] != '"' || j - vs >= cap) return 0;
    memcpy(dst, config + vs, j - vs);
    dst[j - vs] = 0;
    return 1;
  }
  return 0;
}

static void exec_fallback(const char *socket_path, const char *why) {
  char path[PATH_MAX], detail[PATH_MAX + 300];
  const char *fb = getenv("PODVIRT_CNI_FALLBACK");
  if (fb && *fb) {
    snprintf(path, sizeof path, "%s", fb);
  } else {
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
    if (n <= 0) fail(11, "podvirt CNI server unavailable and the fallback cannot be located", why);
    path[n] = 0;
    char *slash = strrchr(path, '/');
    snprintf(slash ? slash + 1 : path, 32, "podvirt-cni.cjs");
  }
  if (access(path, R_OK) != 0) {
    snprintf(detail, sizeof detail, "%s: %s; no fallback at %s", socket_path, why, path);
    fail(11, "podvirt CNI server unavailable", detail);
  }
  /* The config was consumed from stdin: hand it on through an in-memory file. */
  int fd = memfd_create("podvirt-cni-config", 0);
  if (fd < 0) fail(5, "cannot pass the config to the fallback", strerror(errno));
  size_t off = 0;
  while (off < config_len) {
    ssize_t w = write(fd, config + off, config_len - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(5, "cannot pass the config to the fallback", strerror(errno));
    }
    off += (size_t)w;
  }
  if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0) fail(5, "cannot pass the config to the fallback", strerror(errno));
  close(fd);
  const char *node = getenv("PODVIRT_CNI_NODE");
  if (node && *node) {
    char *argv[] = {(char *)node, path, NULL};
    execv(node, argv);
  } else {
    char *argv[] = {path, NULL};
    execv(path, argv);
  }
  snprintf(detail, sizeof detail, "%s: %s", path, strerror(errno));
  fail(11, "podvirt CNI server unavailable and the fallback did not start", detail);
}

static int send_all(int s, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(s, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads exactly n bytes unless EOF/error; returns bytes read. */
static size_t recv_full(int s, char *p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = recv(s, p + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  return got;
}

int main(void) {
  const char *command = getenv("CNI_COMMAND");
  if (!command || !*command) {
    static const char about[] = "podvirt-cni: VM networking (tap / migration) for podvirt\n"
                                "CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n";
    write_all(2, about, sizeof about - 1);
    return 0;
  }
  read_config();
  char v[sizeof version];
  if (top_level_string("cniVersion", v, sizeof v) && strspn(v, "0123456789.") == strlen(v) && v[0]) memcpy(version, v, sizeof v);

  char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  const char *env_sock = getenv("PODVIRT_CNI_SOCKET");
  if (!top_level_string("agentSocket", socket_path, sizeof socket_path)) {
    const char *p = (env_sock && *env_sock) ? env_sock : DEFAULT_SOCKET;
    if (strlen(p) >= sizeof socket_path) fail(4, "PODVIRT_CNI_SOCKET is too long", p);
    strcpy(socket_path, p);
  }

  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) fail(11, "cannot create a unix socket", strerror(errno));
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  strcpy(addr.sun_path, socket_path);
  if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
    int e = errno;
    if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR) exec_fallback(socket_path, strerror(e));
    fail(11, "cannot connect to the podvirt CNI server", strerror(e));
  }
  struct timeval tv = {IO_TIMEOUT_SEC, 0};
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  int bad = send_all(s, MAGIC "\n", sizeof MAGIC);
  for (char **e = environ; !bad && *e; e++) {
    size_t n = strlen(*e);
    if (strncmp(*e, "CNI_", 4) != 0 || n >= MAX_ENV_ENTRY) continue;
    bad = send_all(s, *e, n + 1);
  }
  if (!bad) bad = send_all(s, "", 1);
  if (!bad) bad = send_all(s, config, config_len);
  if (bad) fail(11, "failed to send the request to the podvirt CNI server", strerror(errno));
  shutdown(s, SHUT_WR);

  char header[64];
  size_t hl = 0;
  while (hl < sizeof header - 1) {
    ssize_t r = recv(s, header + hl, 1, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail(11, "the podvirt CNI server closed the connection without an answer", r < 0 ? strerror(errno) : "EOF");
    if (header[hl++] == '\n') break;
  }
  header[hl] = 0;
  int code = -1;
  unsigned long out_len = 0, err_len = 0;
  if (sscanf(header, MAGIC " %d %lu %lu\n", &code, &out_len, &err_len) != 3 || code < 0 || code > 255 ||
      out_len > MAX_STDOUT || err_len > MAX_STDERR)
    fail(11, "malformed answer from the podvirt CNI server", header);
  if (recv_full(s, out_buf, out_len) != out_len) fail(11, "truncated answer from the podvirt CNI server", NULL);
  char chunk[8192];
  while (err_len > 0) {
    size_t want = err_len < sizeof chunk ? err_len : sizeof chunk;
    size_t got = recv_full(s, chunk, want);
    write_all(2, chunk, got);
    if (got < want) break;
    err_len -= got;
  }
  write_all(1, out_buf, out_len);
  close(s);
  return code;
}
