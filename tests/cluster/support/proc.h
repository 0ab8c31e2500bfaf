/* proc.h - real amesh processes for the process tests.
 *
 * A process test starts `amesh node` as a child process on a loopback
 * address (or, as root, inside a network namespace), talks to it over TCP or
 * through the `amesh` CLI, and stops it.
 * These helpers own the mechanics: temporary directories, starting a node
 * with its output in a log file, waiting for its port, stopping or killing
 * it with bounded waits, reading its RSS, running one CLI command with its
 * output captured (at once or on a thread of its own), and opening a TCP
 * connection to a node.
 *
 * Nothing here asserts: every function returns a code (0 or a negative
 * errno) and, where a test wants to say why, fills a message buffer. The
 * test decides what is a failure.
 *
 * Orphans: a started process gets PR_SET_PDEATHSIG(SIGKILL), so when the test
 * process dies for any reason (a crash, Criterion's timeout killing the
 * worker) the kernel kills the node too. The test still stops every node it
 * started in its .fini, so a failed assertion never leaves one running.
 *
 * The binary is AMESH_BIN, defined by CMake for every process test. */
#ifndef AM_TEST_PROC_H
#define AM_TEST_PROC_H

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef AMESH_BIN
#error "AMESH_BIN must name the amesh binary (CMake defines it)"
#endif

/* ---- temporary directories ----------------------------------------------- */

/* Creates a fresh directory /tmp/amesh-proc-<tag>.XXXXXX and writes its path
 * into out (outlen bytes). Returns 0 or a negated errno. */
int proc_tmpdir(char *out, size_t outlen, const char *tag);

/* Removes path and everything under it (symlinks are removed, never
 * followed). A missing path is not an error. Returns 0 or a negated errno. */
int proc_rmtree(const char *path);

/* ---- nodes ----------------------------------------------------------------- */

/* One node process. Caller-allocated; zero it (or proc_node_init it) before
 * first use. pid is 0 whenever no process of this struct is running (or
 * unreaped). */
struct proc_node {
    pid_t pid;
    char addr[32];      /* HOST:PORT it binds, e.g. "127.0.0.10:7946" */
    char data[PATH_MAX]; /* its --data directory */
    char log[PATH_MAX];  /* stdout and stderr of every run, appended */
    char netns[32];      /* "" (the test's own namespace) or a network
                            namespace to run in: proc_node_set_netns */
};

/* Sets addr, data dir and log path (borrowed strings are copied). Starts
 * nothing. */
void proc_node_init(struct proc_node *n, const char *addr, const char *data, const char *log);

/* Makes every later start of n run inside the named network namespace (made
 * by `ip netns add NETNS`): the command becomes `ip netns exec NETNS AMESH_BIN
 * node ...`. ip execs the node in place (no fork), so n->pid is the node's
 * own pid, every signal here reaches the node, and PR_SET_PDEATHSIG (kept
 * across execve) still ties it to the test process. NULL or "" runs it in
 * the test's namespace again. Root only, and `ip` must exist (proc_which). */
void proc_node_set_netns(struct proc_node *n, const char *netns);

/* Starts `AMESH_BIN node --bind ADDR --data DATA [extra...]`; extra is a
 * NULL-terminated list (may be NULL). Output is appended to n->log. Does not
 * wait for the port: see proc_node_wait_ready. Returns 0 or a negated errno;
 * fails with -EBUSY if n already runs. */
int proc_node_spawn(struct proc_node *n, const char *const *extra);

/* Polls a TCP connect to n->addr every 20 ms until it is accepted, for at most
 * timeout_ms. Returns 0 once the port accepts; -ECHILD if the node exited
 * (reaped: n->pid becomes 0), -ETIMEDOUT otherwise. On failure why receives
 * the reason and the last lines of the node's log. */
int proc_node_wait_ready(struct proc_node *n, int timeout_ms, char *why, size_t whylen);

/* proc_node_spawn, then proc_node_wait_ready with 10 s. On failure the node
 * is killed if it still runs. */
int proc_node_start(struct proc_node *n, const char *const *extra, char *why, size_t whylen);

/* Waits at most timeout_ms for n to exit, without signalling it. Returns its
 * exit status as proc_exit_code describes, or -ETIMEDOUT (still running) or
 * -ECHILD (not running). */
int proc_node_wait_exit(struct proc_node *n, int timeout_ms);

/* Sends SIGTERM and waits for the exit, at most timeout_ms (<= 0: 20 s). If
 * the node is still running then, it is SIGKILLed, reaped, a line saying so
 * goes to stderr and the result is -ETIMEDOUT. Otherwise returns the exit
 * status (proc_exit_code). -ECHILD if it was not running. */
int proc_node_stop(struct proc_node *n, int timeout_ms);

/* SIGKILL and reap. Returns 0, or -ECHILD if it was not running. */
int proc_node_kill9(struct proc_node *n);

/* Kills (SIGKILL) and reaps n if it runs; for teardown. */
void proc_node_cleanup(struct proc_node *n);

/* Copies the last (at most) outlen-1 bytes of the log, starting at a line
 * boundary when one is in range, into out (NUL-terminated). */
void proc_log_tail(const char *path, char *out, size_t outlen);

/* The whole log file, NUL-terminated, into a malloc'ed string (caller
 * frees); NULL if it cannot be read. */
char *proc_read_file(const char *path, size_t *len);

/* ---- processes ------------------------------------------------------------- */

/* The wait status as one number: the exit code (0..255), or 128 + N when
 * killed by signal N (the shell's convention). */
int proc_exit_code(int wstatus);

/* Resident set size of pid in bytes (VmRSS of /proc/PID/status), or a
 * negated errno. */
long long proc_rss(pid_t pid);

/* The outcome of one command. out and err are NUL-terminated, malloc'ed and
 * owned by the struct until proc_result_free. */
struct proc_result {
    int code; /* proc_exit_code; -ETIMEDOUT if killed for time, -1 if killed
                 because its output could not be read */
    char *out;
    size_t out_len;
    char *err;
    size_t err_len;
};

/* Runs AMESH_BIN with args (a NULL-terminated list, e.g. {"call", "--node",
 * addr, "counter", "c1", "get", NULL}), stdin from /dev/null, capturing
 * stdout and stderr; waits at most timeout_ms, then kills it (code
 * -ETIMEDOUT). Returns 0 when the command ran (whatever its exit code), or a
 * negated errno when it could not be started or its output could not be
 * read (then it is killed; r is still filled and must be freed). */
int proc_run(struct proc_result *r, int timeout_ms, const char *const *args);

/* proc_run with the arguments given inline: proc_runl(&r, 10000, "call",
 * "--node", addr, ..., (char *)NULL). */
int proc_runl(struct proc_result *r, int timeout_ms, const char *arg0, ...);

/* proc_run on a thread of its own, for a load (`amesh bench`) that runs
 * while the test does something else. */
#define PROC_BG_MAX_ARGS 48
struct proc_bg {
    const char *args[PROC_BG_MAX_ARGS + 1]; /* copied pointers; the strings
                                               are borrowed and must live
                                               until proc_bg_join */
    int timeout_ms;
    struct proc_result r; /* proc_run's result, after proc_bg_join */
    int rc;               /* proc_run's return, after proc_bg_join */
    pthread_t th;
    int running; /* started and not joined yet */
};

/* Starts proc_run(&b->r, timeout_ms, args) on a new thread. Returns 0, or
 * -E2BIG (too many arguments) or a negated errno of pthread_create; then
 * nothing runs and proc_bg_join does nothing. */
int proc_bg_start(struct proc_bg *b, int timeout_ms, const char *const *args);

/* Waits for the command started by proc_bg_start to end (b->r and b->rc
 * are then set). Joining again, or a b that never started, does nothing. */
void proc_bg_join(struct proc_bg *b);

void proc_result_free(struct proc_result *r);

/* Finds the executable `name` (no slash) in PATH, then in /usr/sbin, /sbin,
 * /usr/bin and /bin (system tools such as ip and nft live in sbin, which a
 * test's PATH may lack), and writes its path into out. Returns 0, or -ENOENT
 * when there is none. */
int proc_which(const char *name, char *out, size_t outlen);

/* proc_run for any program: argv[0] is the program itself (a path, or a name
 * looked up with proc_which), e.g. {"ip", "link", "del", "br0", NULL}. Same
 * capture, timeout and result as proc_run; -ENOENT if argv[0] is not found. */
int proc_exec(struct proc_result *r, int timeout_ms, const char *const *argv);

/* proc_exec with the arguments given inline, ending with (char *)NULL. */
int proc_execl(struct proc_result *r, int timeout_ms, const char *arg0, ...);

/* ---- sockets --------------------------------------------------------------- */

/* A TCP connection to HOST:PORT (IPv4), from the local address src_ip when
 * not NULL, with TCP_NODELAY and close-on-exec. Returns the socket, or a
 * negated errno (-EINVAL for an address that is not IPv4 HOST:PORT). */
int proc_tcp_connect(const char *addr, const char *src_ip);

/* ---- time ------------------------------------------------------------------ */

int64_t proc_now_ms(void);
void proc_sleep_ms(int ms);

#endif
