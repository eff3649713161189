/* A minimal TVM RPC server in C, for running cross-compiled artifacts under an emulator (qemu-aarch64).
 *
 * It speaks the same handshake as `python -m tvm.exec.rpc_server`, registers the two callbacks the runtime
 * needs from a server (tvm.rpc.server.workpath and tvm.rpc.server.load_module) and hands each connection to the
 * runtime's rpc.ServerLoop. It needs only libtvm_runtime.so and libtvm_ffi.so for the device, so a device
 * without Python (or an emulated one) can serve. Loopback only unless a host is given.
 *
 * A client must present the key read from the first line of stdin (the handshake's "client:KEY"); any other key
 * gets RPC_CODE_MISMATCH and the connection closed, before anything is uploaded. The key is read from stdin, not
 * the command line, which every local user can read in /proc. A client that sends no handshake within 10 s is
 * dropped.
 *
 * usage: echo KEY | rpc_server WORKDIR [PORT [HOST]]   (PORT 0 picks a free port; printed on stdout)
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include <tvm/ffi/c_api.h>

#define RPC_MAGIC 0xFF271
#define RPC_CODE_SUCCESS (RPC_MAGIC + 0)
#define RPC_CODE_MISMATCH (RPC_MAGIC + 2)
#define SERVER_KEY "server:onnxsmith-c"

static char g_workdir[PATH_MAX];
static char g_key[256];

/* The C API's accessors are C++ inline functions; these are the same offsets (cells follow the object header). */
#define CELL(obj, type) ((type*)((char*)(obj) + sizeof(TVMFFIObject)))

static TVMFFIByteArray byte_array(const char* text) {
  TVMFFIByteArray out = {text, strlen(text)};
  return out;
}

/* The text of a string argument, copied into buf; 0 when it is no string. */
static int arg_string(const TVMFFIAny* arg, char* buf, size_t size) {
  TVMFFIByteArray text = {NULL, 0};
  if (arg->type_index == kTVMFFIRawStr) {
    text = byte_array(arg->v_c_str);
  } else if (arg->type_index == kTVMFFISmallStr) {
    text.data = arg->v_bytes;
    text.size = arg->small_str_len;
  } else if (arg->type_index == kTVMFFIStr) {
    text = *CELL(arg->v_obj, TVMFFIByteArray);
  } else {
    return 0;
  }
  if (text.size + 1 > size) return 0;
  memcpy(buf, text.data, text.size);
  buf[text.size] = '\0';
  return 1;
}

/* workdir/name, refusing names that leave the work directory. */
static int resolve(const TVMFFIAny* args, int32_t num_args, char* out, size_t size) {
  char name[PATH_MAX];
  if (num_args < 1 || !arg_string(&args[0], name, sizeof(name))) {
    TVMFFIErrorSetRaisedFromCStr("TypeError", "expected a file name");
    return 0;
  }
  if (name[0] == '/' || strstr(name, "..") != NULL) {
    TVMFFIErrorSetRaisedFromCStr("ValueError", "file names must stay inside the server's work directory");
    return 0;
  }
  if ((size_t)snprintf(out, size, "%s/%s", g_workdir, name) >= size) {
    TVMFFIErrorSetRaisedFromCStr("ValueError", "path too long");
    return 0;
  }
  return 1;
}

static int workpath(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  char path[PATH_MAX];
  (void)self;
  if (!resolve(args, num_args, path, sizeof(path))) return -1;
  TVMFFIByteArray text = byte_array(path);
  return TVMFFIStringFromByteArray(&text, result);
}

static int load_module(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  char path[PATH_MAX];
  TVMFFIObjectHandle loader = NULL;
  TVMFFIByteArray name = byte_array("ffi.ModuleLoadFromFile");
  TVMFFIAny arg;
  (void)self;
  if (!resolve(args, num_args, path, sizeof(path))) return -1;
  if (TVMFFIFunctionGetGlobal(&name, &loader) != 0 || loader == NULL) {
    TVMFFIErrorSetRaisedFromCStr("RuntimeError", "ffi.ModuleLoadFromFile is not registered");
    return -1;
  }
  memset(&arg, 0, sizeof(arg));
  arg.type_index = kTVMFFIRawStr;
  arg.v_c_str = path;
  result->type_index = kTVMFFINone;
  int rc = TVMFFIFunctionCall(loader, &arg, 1, result);
  TVMFFIObjectDecRef(loader);
  return rc;
}

static int register_global(const char* name, TVMFFISafeCallType call) {
  TVMFFIObjectHandle func = NULL;
  TVMFFIByteArray key = byte_array(name);
  if (TVMFFIFunctionCreate(NULL, call, NULL, &func) != 0) return -1;
  return TVMFFIFunctionSetGlobal(&key, func, 1);
}

static int recv_all(int fd, void* buf, size_t size) {
  char* p = (char*)buf;
  while (size > 0) {
    ssize_t n = recv(fd, p, size, 0);
    if (n <= 0) return -1;
    p += n;
    size -= (size_t)n;
  }
  return 0;
}

static int send_all(int fd, const void* buf, size_t size) {
  const char* p = (const char*)buf;
  while (size > 0) {
    ssize_t n = send(fd, p, size, 0);
    if (n <= 0) return -1;
    p += n;
    size -= (size_t)n;
  }
  return 0;
}

/* "client:KEY" or "client:KEY -option...": equal to this server's key, compared in constant time. */
static int key_matches(const char* given) {
  size_t expected = strlen(g_key), n = strcspn(given, " ");
  unsigned char diff = (unsigned char)(n != expected);
  for (size_t i = 0; i < expected; i++) diff |= (unsigned char)(g_key[i] ^ (i < n ? given[i] : 0));
  return diff == 0;
}

/* The handshake of tvm/rpc/server.py: magic, client key; answer success and the server key, or mismatch. */
static int handshake(int fd) {
  int32_t magic = 0, keylen = 0, code = RPC_CODE_SUCCESS, server_len = (int32_t)strlen(SERVER_KEY);
  char key[4096];
  if (recv_all(fd, &magic, 4) != 0 || magic != RPC_MAGIC) return -1;
  if (recv_all(fd, &keylen, 4) != 0 || keylen < 0 || keylen >= (int32_t)sizeof(key)) return -1;
  if (recv_all(fd, key, (size_t)keylen) != 0) return -1;
  key[keylen] = '\0';
  if (strncmp(key, "client:", 7) != 0 || !key_matches(key + 7)) {
    code = RPC_CODE_MISMATCH;
    send_all(fd, &code, 4);
    return -1;
  }
  if (send_all(fd, &code, 4) != 0 || send_all(fd, &server_len, 4) != 0) return -1;
  return send_all(fd, SERVER_KEY, (size_t)server_len);
}

static void print_error(const char* what) {
  TVMFFIObjectHandle err = NULL;
  TVMFFIErrorMoveFromRaised(&err);
  if (err != NULL) {
    TVMFFIErrorCell* cell = CELL(err, TVMFFIErrorCell);
    fprintf(stderr, "%s: %.*s: %.*s\n", what, (int)cell->kind.size, cell->kind.data, (int)cell->message.size,
            cell->message.data);
    TVMFFIObjectDecRef(err);
  } else {
    fprintf(stderr, "%s failed\n", what);
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s WORKDIR [PORT [HOST]]\n", argv[0]);
    return 2;
  }
  if (realpath(argv[1], g_workdir) == NULL) {
    perror(argv[1]);
    return 2;
  }
  int port = argc > 2 ? atoi(argv[2]) : 9090;
  const char* host = argc > 3 ? argv[3] : "127.0.0.1";
  if (fgets(g_key, sizeof(g_key), stdin) == NULL) g_key[0] = '\0';
  g_key[strcspn(g_key, "\r\n")] = '\0';
  if (strlen(g_key) < 16 || strchr(g_key, ' ') != NULL) {
    fprintf(stderr, "expected a key of at least 16 characters, without spaces, on the first line of stdin\n");
    return 2;
  }
  if (register_global("tvm.rpc.server.workpath", workpath) != 0 ||
      register_global("tvm.rpc.server.load_module", load_module) != 0) {
    print_error("registering the server callbacks");
    return 1;
  }
  TVMFFIObjectHandle loop = NULL;
  TVMFFIByteArray loop_name = byte_array("rpc.ServerLoop");
  if (TVMFFIFunctionGetGlobal(&loop_name, &loop) != 0 || loop == NULL) {
    fprintf(stderr, "rpc.ServerLoop is not registered: is this libtvm_runtime built with RPC?\n");
    return 1;
  }
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1 || bind(listener, (struct sockaddr*)&addr, sizeof(addr)) != 0 ||
      listen(listener, 4) != 0) {
    perror("listen");
    return 1;
  }
  socklen_t len = sizeof(addr);
  getsockname(listener, (struct sockaddr*)&addr, &len);
  printf("listening %s:%d\n", host, ntohs(addr.sin_port));
  fflush(stdout);
  signal(SIGCHLD, SIG_IGN); /* children are reaped by the system */
  for (;;) {
    int fd = accept(listener, NULL, NULL);
    if (fd < 0) continue;
    /* One process per session, like the Python server: a client that keeps its session open does not block
     * the next one, and a crash in one model takes only its own session down. */
    pid_t pid = fork();
    if (pid == 0) {
      close(listener);
      int rc = 1;
      struct timeval handshake_timeout = {10, 0}, none = {0, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &handshake_timeout, sizeof(handshake_timeout));
      int shaken = handshake(fd) == 0;
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
      if (shaken) {
        TVMFFIAny arg, result;
        memset(&arg, 0, sizeof(arg));
        arg.type_index = kTVMFFIInt;
        arg.v_int64 = fd;
        memset(&result, 0, sizeof(result));
        result.type_index = kTVMFFINone;
        rc = TVMFFIFunctionCall(loop, &arg, 1, &result) != 0;
        if (rc) print_error("rpc.ServerLoop");
      }
      close(fd);
      _exit(rc);
    }
    if (pid < 0) perror("fork");
    close(fd);
  }
}
