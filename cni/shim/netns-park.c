/*
 * podvirt-netns-park.so: lets the CNI server keep `ip -batch -` / `tc -batch -` processes warm.
 *
 * Preloaded (LD_PRELOAD) into a tool started ahead of time with PODVIRT_PARK_FD=N, the
 * constructor runs after the dynamic loader is done and parks the process: it blocks reading
 * one line from fd N. The line names a network namespace file (or "-" for the current one); the
 * constructor enters it with setns(2) and returns, and the tool's main() starts and reads its
 * batch from stdin. Process creation, exec and library loading are thereby off the request's
 * critical path. EOF or an empty line exits without running the tool. Before blocking it says
 * "parked\n" on fd N (a socketpair): the server only uses processes that said so, so a preload
 * that failed to load can never run pod commands in the host netns; and a failed setns exits
 * before main() runs, so the batch the server already wrote is never executed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void die(const char *msg) {
  ssize_t w = write(2, msg, strlen(msg));
  (void)w;
  _exit(125);
}

__attribute__((constructor)) static void podvirt_park(void) {
  const char *fd_env = getenv("PODVIRT_PARK_FD");
  if (!fd_env || !*fd_env) return;
  int fd = atoi(fd_env);
  unsetenv("PODVIRT_PARK_FD");
  unsetenv("LD_PRELOAD");
  if (write(fd, "parked\n", 7) != 7) _exit(0);
  char path[4096];
  size_t n = 0;
  while (n < sizeof path - 1) {
    ssize_t r = read(fd, path + n, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 || path[n] == '\n') break;
    n++;
  }
  if (n == 0) _exit(0);
  path[n] = 0;
  if (strcmp(path, "-") != 0) {
    int ns = open(path, O_RDONLY | O_CLOEXEC);
    if (ns < 0) die("podvirt-netns-park: cannot open the network namespace\n");
    if (setns(ns, CLONE_NEWNET) != 0) die("podvirt-netns-park: setns failed\n");
    close(ns);
  }
  close(fd);
}
