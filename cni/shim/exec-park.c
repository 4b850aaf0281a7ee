/*
 * podvirt-exec-park: a process the CNI server starts ahead of time so that running an IPAM
 * plugin costs an exec but no fork of the (large) server process on the request's path.
 *
 * It says "parked\n" on fd 3 (a socketpair), then reads one request from it:
 *   PATH NUL { "KEY=VALUE" NUL } NUL
 * and execs PATH with exactly that environment; stdin/stdout/stderr are the pipes the server
 * gave it. EOF before a complete request exits quietly. Static buffers only.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#define MAX_REQUEST (256 * 1024)
#define MAX_ENV 1024

static char req[MAX_REQUEST];
static char *envp[MAX_ENV + 1];

int main(void) {
  if (write(3, "parked\n", 7) != 7) return 0;
  size_t len = 0;
  for (;;) {
    if (len == sizeof req) return 126;
    ssize_t r = read(3, req + len, sizeof req - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
  }
  close(3);
  /* Complete means: a path, then entries, then an empty entry (two NULs in a row after the path). */
  char *path = req;
  size_t plen = strnlen(req, len);
  if (plen == 0 || plen == len) return 0;
  size_t i = plen + 1;
  int n = 0, complete = 0;
  while (i < len) {
    size_t e = strnlen(req + i, len - i);
    if (i + e == len) break; /* unterminated */
    if (e == 0) {
      complete = 1;
      break;
    }
    if (n == MAX_ENV) return 126;
    envp[n++] = req + i;
    i += e + 1;
  }
  if (!complete) return 0;
  envp[n] = NULL;
  char *argv[] = {path, NULL};
  execve(path, argv, envp);
  static const char msg[] = "podvirt-exec-park: exec failed\n";
  if (write(2, msg, sizeof msg - 1) < 0) return 127;
  return 127;
}
