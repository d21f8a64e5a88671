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
//
// A process where TensorFlow is already loaded (a user's Python calling tf_puma.connect) cannot
// be preloaded any more: `puma_bind_patch("tensorflow")` points the `bind` slots of TensorFlow's
// loaded libraries' global offset tables (PLT and GOT relocations) at the rewrite instead, before
// the server starts (x86-64 and aarch64 relocation types).

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__x86_64__)
#define JUMP_SLOT R_X86_64_JUMP_SLOT
#define GLOB_DAT R_X86_64_GLOB_DAT
#elif defined(__aarch64__)
#define JUMP_SLOT R_AARCH64_JUMP_SLOT
#define GLOB_DAT R_AARCH64_GLOB_DAT
#else
#error "bind_host.c: add this architecture's JUMP_SLOT/GLOB_DAT relocation types"
#endif

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

// libc's bind: the next definition when preloaded; libc's own when loaded after it (dlopen).
static bind_fn libc_bind(void) {
  bind_fn found = (bind_fn)dlsym(RTLD_NEXT, "bind");
  if (found != NULL) return found;
  void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  return libc == NULL ? NULL : (bind_fn)dlsym(libc, "bind");
}

static int rewrite_bind(int fd, const struct sockaddr* addr, socklen_t len);

// Points one relocation table's slots for `bind` at ours; returns how many it changed.
static int patch_table(ElfW(Addr) base, const ElfW(Rela)* rela, size_t size,
                       const ElfW(Sym)* symbols, const char* strings) {
  int patched = 0;
  long page = sysconf(_SC_PAGESIZE);
  for (size_t i = 0; i < size / sizeof(ElfW(Rela)); ++i) {
    unsigned long type = ELF64_R_TYPE(rela[i].r_info);
    if (type != JUMP_SLOT && type != GLOB_DAT) continue;
    const char* name = strings + symbols[ELF64_R_SYM(rela[i].r_info)].st_name;
    if (strcmp(name, "bind") != 0) continue;
    void** slot = (void**)(base + rela[i].r_offset);
    if (*slot == (void*)&rewrite_bind) continue;
    void* start = (void*)((uintptr_t)slot & ~(uintptr_t)(page - 1));
    if (mprotect(start, (size_t)page, PROT_READ | PROT_WRITE) != 0) continue;
    *slot = (void*)&rewrite_bind;  // a full-RELRO page stays writable: only this one page
    ++patched;
  }
  return patched;
}

struct patch_request {
  const char* path_part;  // only objects whose path contains this
  int patched;
};

static int patch_object(struct dl_phdr_info* info, size_t size, void* data) {
  (void)size;
  struct patch_request* request = (struct patch_request*)data;
  int* patched = &request->patched;
  const char* name = info->dlpi_name;
  if (name == NULL || strstr(name, request->path_part) == NULL ||
      strstr(name, "_puma_bind") != NULL)
    return 0;
  for (int p = 0; p < info->dlpi_phnum; ++p) {
    if (info->dlpi_phdr[p].p_type != PT_DYNAMIC) continue;
    const ElfW(Dyn)* dyn = (const ElfW(Dyn)*)(info->dlpi_addr + info->dlpi_phdr[p].p_vaddr);
    const ElfW(Rela)* jmprel = NULL;
    const ElfW(Rela)* rela = NULL;
    const ElfW(Sym)* symbols = NULL;
    const char* strings = NULL;
    size_t jmprel_size = 0, rela_size = 0;
    for (; dyn->d_tag != DT_NULL; ++dyn) {
      // The dynamic linker has already relocated these to addresses (glibc).
      switch (dyn->d_tag) {
        case DT_JMPREL: jmprel = (const ElfW(Rela)*)dyn->d_un.d_ptr; break;
        case DT_PLTRELSZ: jmprel_size = dyn->d_un.d_val; break;
        case DT_RELA: rela = (const ElfW(Rela)*)dyn->d_un.d_ptr; break;
        case DT_RELASZ: rela_size = dyn->d_un.d_val; break;
        case DT_SYMTAB: symbols = (const ElfW(Sym)*)dyn->d_un.d_ptr; break;
        case DT_STRTAB: strings = (const char*)dyn->d_un.d_ptr; break;
        default: break;
      }
    }
    if (symbols == NULL || strings == NULL) continue;
    // glibc relocates these entries in place only where .dynamic is writable: an address
    // below the object's base is still an offset.
    ElfW(Addr) base = info->dlpi_addr;
#define AT_OBJECT(ptr, type) \
  ((ptr) != NULL && (ElfW(Addr))(ptr) < base ? (type)(base + (ElfW(Addr))(ptr)) : (ptr))
    jmprel = AT_OBJECT(jmprel, const ElfW(Rela)*);
    rela = AT_OBJECT(rela, const ElfW(Rela)*);
    symbols = AT_OBJECT(symbols, const ElfW(Sym)*);
    strings = AT_OBJECT(strings, const char*);
#undef AT_OBJECT
    if (jmprel != NULL) *patched += patch_table(info->dlpi_addr, jmprel, jmprel_size, symbols,
                                                strings);
    if (rela != NULL) *patched += patch_table(info->dlpi_addr, rela, rela_size, symbols, strings);
  }
  return 0;
}

// Redirects `bind` in every loaded library whose path contains `path_part` ("tensorflow": the
// process's other sockets, Python's included, keep libc's bind) to this library's rewrite;
// returns the number of slots changed (0: none calls bind through a table, or already done).
__attribute__((visibility("default"))) int puma_bind_patch(const char* path_part) {
  struct patch_request request = {path_part, 0};
  dl_iterate_phdr(patch_object, &request);
  return request.patched;
}

// The exported bind (what LD_PRELOAD interposes). Patched slots point at rewrite_bind directly:
// `&bind` inside this library resolves to the global scope's bind, libc's when dlopen()ed.
__attribute__((visibility("default"))) int bind(int fd, const struct sockaddr* addr,
                                                 socklen_t len) {
  return rewrite_bind(fd, addr, len);
}

static int rewrite_bind(int fd, const struct sockaddr* addr, socklen_t len) {
  static bind_fn real_bind = NULL;
  if (real_bind == NULL) real_bind = libc_bind();
  if (real_bind == NULL) return -1;
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
