// Makes a TensorFlow server listen on one address instead of all interfaces.
//
// TensorFlow's gRPC server binds "0.0.0.0:PORT" (or "[::]:PORT"), whatever host the cluster spec
// names, so a party meant for loopback is reachable from the whole network. Preloaded into a
// tf-puma process (LD_PRELOAD, set by `tf-puma party` and the CLI before TensorFlow starts), this
// library rewrites every bind() to the wildcard address (the only listening socket such a process
// opens is its TF server) to TF_PUMA_BIND_HOST (an IPv4 or IPv6 literal); binds to a specific
// address pass through untouched, and so does everything when the variable is unset.
//
// Each rewrite is counted; `puma_bind_rewrites()` lets the process check the shim took effect.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr*, socklen_t);

static int rewrites = 0;

__attribute__((visibility("default"))) int puma_bind_rewrites(void) { return rewrites; }

// The host literal from TF_PUMA_BIND_HOST ("127.0.0.1", "::1", "[::1]"); 0 when unset or too long.
static int wanted(char* host, size_t host_size) {
  const char* spec = getenv("TF_PUMA_BIND_HOST");
  if (spec == NULL || *spec == '\0') return 0;
  size_t n = strlen(spec);
  if (spec[0] == '[' && spec[n - 1] == ']') {
    ++spec;
    n -= 2;
  }
  if (n == 0 || n >= host_size) return 0;
  memcpy(host, spec, n);
  host[n] = '\0';
  return 1;
}

__attribute__((visibility("default"))) int bind(int fd, const struct sockaddr* addr,
                                                 socklen_t len) {
  static bind_fn real_bind = NULL;
  if (real_bind == NULL) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
  char host[INET6_ADDRSTRLEN + 1];
  if (addr == NULL || !wanted(host, sizeof host)) return real_bind(fd, addr, len);

  if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in* in = (const struct sockaddr_in*)addr;
    struct in_addr v4;
    if (in->sin_addr.s_addr == htonl(INADDR_ANY) &&
        inet_pton(AF_INET, host, &v4) == 1) {
      struct sockaddr_in moved = *in;
      moved.sin_addr = v4;
      ++rewrites;
      return real_bind(fd, (const struct sockaddr*)&moved, sizeof moved);
    }
  } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6* in6 = (const struct sockaddr_in6*)addr;
    struct in6_addr v6;
    struct in_addr v4;
    if (memcmp(&in6->sin6_addr, &in6addr_any, sizeof in6addr_any) == 0) {
      struct sockaddr_in6 moved = *in6;
      if (inet_pton(AF_INET6, host, &v6) == 1) {
        moved.sin6_addr = v6;
      } else if (inet_pton(AF_INET, host, &v4) == 1) {  // dual-stack socket: ::ffff:a.b.c.d
        memset(&moved.sin6_addr, 0, sizeof moved.sin6_addr);
        moved.sin6_addr.s6_addr[10] = 0xff;
        moved.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&moved.sin6_addr.s6_addr[12], &v4, 4);
      } else {
        return real_bind(fd, addr, len);
      }
      ++rewrites;
      return real_bind(fd, (const struct sockaddr*)&moved, sizeof moved);
    }
  }
  return real_bind(fd, addr, len);
}
