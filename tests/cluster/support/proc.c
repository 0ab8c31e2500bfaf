/* proc.c - starting, watching and stopping amesh processes (see proc.h).
 *
 * Every wait is a poll with a deadline: waitpid(WNOHANG) every 5 ms for
 * exits, a connect every 20 ms for readiness, poll() on the pipes of a CLI
 * command. None can hang a test: a process that outlives its deadline is
 * SIGKILLed and reaped.
 *
 * Children are made with fork + execv. Between the two the child calls only
 * async-signal-safe functions (the test process may have threads), and every
 * argument vector is built before the fork. */
/* nftw (X/Open), pipe2 and close_range (GNU) are beyond the project's POSIX
 * level. */
#define _GNU_SOURCE
#include "proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Enough for "node --bind A --data D" and every flag a test passes. */
#define MAX_ARGS 64

int64_t proc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void proc_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* ---- temporary directories ----------------------------------------------- */

int proc_tmpdir(char *out, size_t outlen, const char *tag)
{
    int n = snprintf(out, outlen, "/tmp/amesh-proc-%s.XXXXXX", tag);
    if (n < 0 || (size_t)n >= outlen)
        return -ENAMETOOLONG;
    return mkdtemp(out) ? 0 : -errno;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) ? -errno : 0;
}

int proc_rmtree(const char *path)
{
    struct stat st;
    if (lstat(path, &st))
        return errno == ENOENT ? 0 : -errno;
    /* FTW_DEPTH: children before their directory; FTW_PHYS: never follow a
     * symlink out of the tree. 16 descriptors is plenty for a test's depth. */
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- children -------------------------------------------------------------- */

/* In the child, before execv: die with the test process, default signal
 * handling, stdin from /dev/null, stdout/stderr to out/err. Async-signal-safe
 * only. Never returns. */
static void exec_child(pid_t parent, char *const *argv, int out, int err)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) /* the parent died before prctl took effect */
        _exit(127);
    int in = open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(127);
    /* Nothing else of the test process (Criterion's pipes, other nodes'
     * sockets) may stay open in the child. */
    close_range(3, ~0u, 0);
    execv(argv[0], argv);
    static const char msg[] = "proc: cannot exec ";
    if (write(2, msg, sizeof msg - 1) < 0 || write(2, argv[0], strlen(argv[0])) < 0 ||
        write(2, "\n", 1) < 0)
        _exit(127);
    _exit(127);
}

int proc_exit_code(int wstatus)
{
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return -1;
}

/* Waits for pid until deadline_ms (proc_now_ms time). Returns the exit code,
 * or -ETIMEDOUT. */
static int wait_until(pid_t pid, int64_t deadline_ms)
{
    for (;;) {
        int ws;
        pid_t r = waitpid(pid, &ws, WNOHANG);
        if (r == pid)
            return proc_exit_code(ws);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (proc_now_ms() >= deadline_ms)
            return -ETIMEDOUT;
        proc_sleep_ms(5);
    }
}

/* ---- nodes ----------------------------------------------------------------- */

void proc_node_init(struct proc_node *n, const char *addr, const char *data, const char *log)
{
    memset(n, 0, sizeof *n);
    snprintf(n->addr, sizeof n->addr, "%s", addr);
    snprintf(n->data, sizeof n->data, "%s", data);
    snprintf(n->log, sizeof n->log, "%s", log);
}

void proc_node_set_netns(struct proc_node *n, const char *netns)
{
    snprintf(n->netns, sizeof n->netns, "%s", netns ? netns : "");
}

int proc_node_spawn(struct proc_node *n, const char *const *extra)
{
    char *argv[MAX_ARGS];
    char ip[PATH_MAX];
    int argc = 0;
    if (n->pid > 0)
        return -EBUSY;
    if (n->netns[0]) {
        /* `ip netns exec NS CMD` enters NS and execs CMD: the pid stays the
         * node's. */
        int rc = proc_which("ip", ip, sizeof ip);
        if (rc)
            return rc;
        argv[argc++] = ip;
        argv[argc++] = (char *)"netns";
        argv[argc++] = (char *)"exec";
        argv[argc++] = n->netns;
    }
    argv[argc++] = (char *)AMESH_BIN;
    argv[argc++] = (char *)"node";
    argv[argc++] = (char *)"--bind";
    argv[argc++] = n->addr;
    argv[argc++] = (char *)"--data";
    argv[argc++] = n->data;
    for (int i = 0; extra && extra[i]; i++) {
        if (argc == MAX_ARGS - 1)
            return -E2BIG;
        argv[argc++] = (char *)extra[i];
    }
    argv[argc] = NULL;
    int log = open(n->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0)
        return -errno;
    /* A line per start makes a log of several runs readable. */
    char head[128];
    int hl = snprintf(head, sizeof head, "---- proc: starting node %s%s%s\n", n->addr,
                      n->netns[0] ? " in network namespace " : "", n->netns);
    if (hl > 0 && write(log, head, (size_t)hl) < 0) {
        /* not fatal: the log is for reading after a failure */
    }
    pid_t parent = getpid();
    fflush(NULL); /* the child must not flush the parent's stdio buffers */
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(log);
        return -e;
    }
    if (pid == 0)
        exec_child(parent, argv, log, log);
    close(log);
    n->pid = pid;
    return 0;
}

static int parse_addr(const char *hostport, struct sockaddr_in *sa)
{
    char host[32];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host)
        return -EINVAL;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)strtoul(colon + 1, NULL, 10));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -EINVAL;
}

int proc_tcp_connect(const char *addr, const char *src_ip)
{
    struct sockaddr_in sa, src;
    if (parse_addr(addr, &sa))
        return -EINVAL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (src_ip) {
        memset(&src, 0, sizeof src);
        src.sin_family = AF_INET;
        if (inet_pton(AF_INET, src_ip, &src.sin_addr) != 1) {
            close(fd);
            return -EINVAL;
        }
        if (bind(fd, (struct sockaddr *)&src, sizeof src)) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int proc_node_wait_ready(struct proc_node *n, int timeout_ms, char *why, size_t whylen)
{
    struct sockaddr_in sa;
    char tail[1024];
    if (parse_addr(n->addr, &sa)) {
        snprintf(why, whylen, "bad address '%s'", n->addr);
        return -EINVAL;
    }
    int64_t deadline = proc_now_ms() + timeout_ms;
    for (;;) {
        if (n->pid <= 0) {
            snprintf(why, whylen, "node %s is not running", n->addr);
            return -ECHILD;
        }
        int ws;
        if (waitpid(n->pid, &ws, WNOHANG) == n->pid) {
            n->pid = 0;
            proc_log_tail(n->log, tail, sizeof tail);
            snprintf(why, whylen, "node %s exited with %d before accepting; log ends:\n%s",
                     n->addr, proc_exit_code(ws), tail);
            return -ECHILD;
        }
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(why, whylen, "socket: %s", strerror(errno));
            return -errno;
        }
        /* Loopback connects are answered at once: accepted or refused. */
        int rc = connect(fd, (const struct sockaddr *)&sa, sizeof sa);
        close(fd);
        if (rc == 0)
            return 0;
        if (proc_now_ms() >= deadline) {
            proc_log_tail(n->log, tail, sizeof tail);
            snprintf(why, whylen, "node %s did not accept within %d ms; log ends:\n%s", n->addr,
                     timeout_ms, tail);
            return -ETIMEDOUT;
        }
        proc_sleep_ms(20);
    }
}

int proc_node_start(struct proc_node *n, const char *const *extra, char *why, size_t whylen)
{
    int rc = proc_node_spawn(n, extra);
    if (rc) {
        snprintf(why, whylen, "cannot start node %s: %s", n->addr, strerror(-rc));
        return rc;
    }
    rc = proc_node_wait_ready(n, 10000, why, whylen);
    if (rc)
        proc_node_cleanup(n);
    return rc;
}

int proc_node_wait_exit(struct proc_node *n, int timeout_ms)
{
    if (n->pid <= 0)
        return -ECHILD;
    int rc = wait_until(n->pid, proc_now_ms() + timeout_ms);
    if (rc != -ETIMEDOUT)
        n->pid = 0;
    return rc;
}

int proc_node_stop(struct proc_node *n, int timeout_ms)
{
    if (n->pid <= 0)
        return -ECHILD;
    if (timeout_ms <= 0)
        timeout_ms = 20000;
    kill(n->pid, SIGTERM);
    int rc = proc_node_wait_exit(n, timeout_ms);
    if (rc == -ETIMEDOUT) {
        fprintf(stderr, "proc: node %s (pid %d) still running %d ms after SIGTERM; killing it\n",
                n->addr, (int)n->pid, timeout_ms);
        proc_node_cleanup(n);
    }
    return rc;
}

int proc_node_kill9(struct proc_node *n)
{
    if (n->pid <= 0)
        return -ECHILD;
    kill(n->pid, SIGKILL);
    /* SIGKILL cannot be caught: the wait is only as long as the kernel needs
     * to tear the process down. */
    int rc = wait_until(n->pid, proc_now_ms() + 10000);
    n->pid = 0;
    return rc < 0 ? rc : 0;
}

void proc_node_cleanup(struct proc_node *n)
{
    if (n->pid > 0)
        proc_node_kill9(n);
}

char *proc_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    while (s) {
        if (cap - n < 2) {
            char *t = realloc(s, cap * 2);
            if (!t) {
                free(s);
                s = NULL;
                break;
            }
            s = t;
            cap *= 2;
        }
        size_t k = fread(s + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0)
            break;
    }
    fclose(f);
    if (s) {
        s[n] = '\0';
        if (len)
            *len = n;
    }
    return s;
}

void proc_log_tail(const char *path, char *out, size_t outlen)
{
    size_t len = 0;
    char *s = proc_read_file(path, &len);
    if (!outlen)
        goto done;
    out[0] = '\0';
    if (!s)
        goto done;
    size_t start = len > outlen - 1 ? len - (outlen - 1) : 0;
    if (start) {
        const char *nl = memchr(s + start, '\n', len - start);
        if (nl && (size_t)(nl - s) + 1 < len)
            start = (size_t)(nl - s) + 1;
    }
    snprintf(out, outlen, "%s", s + start);
done:
    free(s);
}

/* ---- processes ------------------------------------------------------------- */

long long proc_rss(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    long long kb = -ENOENT;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtoll(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb < 0 ? kb : kb * 1024;
}

struct sink {
    char *p;
    size_t len, cap;
};

static int sink_read(struct sink *s, int fd)
{
    if (s->cap - s->len < 65536 + 1) {
        size_t cap = s->cap ? s->cap * 2 : 131072;
        while (cap - s->len < 65536 + 1)
            cap *= 2;
        char *t = realloc(s->p, cap);
        if (!t)
            return -ENOMEM;
        s->p = t;
        s->cap = cap;
    }
    ssize_t k = read(fd, s->p + s->len, s->cap - s->len - 1);
    if (k < 0)
        return errno == EINTR || errno == EAGAIN ? 1 : -errno;
    if (k == 0)
        return 0; /* EOF */
    s->len += (size_t)k;
    return 1;
}

static char *sink_finish(struct sink *s, size_t *len)
{
    if (!s->p) {
        s->p = malloc(1);
        if (!s->p)
            return NULL;
    }
    s->p[s->len] = '\0';
    *len = s->len;
    return s->p;
}

/* Runs argv (argv[0] a path) as proc_run describes; the caller zeroed r. */
static int run_argv(struct proc_result *r, int timeout_ms, char *const *argv)
{
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC)) {
        int e = errno;
        if (po[0] >= 0) {
            close(po[0]);
            close(po[1]);
        }
        return -e;
    }
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(po[0]);
        close(po[1]);
        close(pe[0]);
        close(pe[1]);
        return -e;
    }
    if (pid == 0)
        exec_child(parent, argv, po[1], pe[1]);
    close(po[1]);
    close(pe[1]);

    struct sink so = {0}, se = {0};
    int64_t deadline = proc_now_ms() + timeout_ms;
    struct pollfd pf[2] = {{.fd = po[0], .events = POLLIN}, {.fd = pe[0], .events = POLLIN}};
    int open_fds = 2, timed_out = 0, failed = 0;
    while (open_fds > 0) {
        int64_t left = deadline - proc_now_ms();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int k = poll(pf, 2, (int)left);
        if (k < 0 && errno != EINTR) {
            failed = -errno;
            break;
        }
        for (int i = 0; i < 2 && k > 0; i++) {
            if (pf[i].fd < 0 || !pf[i].revents)
                continue;
            int rc = sink_read(i == 0 ? &so : &se, pf[i].fd);
            if (rc < 0) {
                failed = rc;
                break;
            }
            if (rc == 0) {
                close(pf[i].fd);
                pf[i].fd = -1;
                open_fds--;
            }
        }
        if (failed)
            break;
    }
    for (int i = 0; i < 2; i++)
        if (pf[i].fd >= 0)
            close(pf[i].fd);
    int code = timed_out ? -ETIMEDOUT : failed ? failed : wait_until(pid, deadline);
    if (code < 0) {
        /* Out of time, or the pipes failed: the command must not outlive
         * the test. */
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    r->code = code == -ETIMEDOUT ? -ETIMEDOUT : code < 0 ? -1 : code;
    r->out = sink_finish(&so, &r->out_len);
    r->err = sink_finish(&se, &r->err_len);
    if (!r->out || !r->err) {
        proc_result_free(r);
        return -ENOMEM;
    }
    return failed;
}

/* Copies the NULL-terminated variadic list starting at arg0 into args
 * (room for max entries, the NULL included). Returns 0 or -E2BIG. */
static int collect(const char **args, size_t max, const char *arg0, va_list ap)
{
    size_t n = 0;
    for (const char *a = arg0; a; a = va_arg(ap, const char *)) {
        if (n == max - 1)
            return -E2BIG;
        args[n++] = a;
    }
    args[n] = NULL;
    return 0;
}

int proc_execl(struct proc_result *r, int timeout_ms, const char *arg0, ...)
{
    const char *args[MAX_ARGS];
    va_list ap;
    va_start(ap, arg0);
    int rc = collect(args, MAX_ARGS, arg0, ap);
    va_end(ap);
    if (rc) {
        memset(r, 0, sizeof *r);
        return rc;
    }
    return proc_exec(r, timeout_ms, args);
}

/* The amesh binary is AMESH_BIN, an absolute path: proc_exec runs it as is. */
int proc_run(struct proc_result *r, int timeout_ms, const char *const *args)
{
    const char *all[MAX_ARGS];
    size_t n = 0;
    all[n++] = AMESH_BIN;
    for (size_t i = 0; args[i]; i++) {
        if (n == MAX_ARGS - 1) {
            memset(r, 0, sizeof *r);
            return -E2BIG;
        }
        all[n++] = args[i];
    }
    all[n] = NULL;
    return proc_exec(r, timeout_ms, all);
}

int proc_runl(struct proc_result *r, int timeout_ms, const char *arg0, ...)
{
    const char *args[MAX_ARGS];
    va_list ap;
    va_start(ap, arg0);
    int rc = collect(args, MAX_ARGS, arg0, ap);
    va_end(ap);
    if (rc) {
        memset(r, 0, sizeof *r);
        return rc;
    }
    return proc_run(r, timeout_ms, args);
}

static void *bg_main(void *arg)
{
    struct proc_bg *b = arg;
    b->rc = proc_run(&b->r, b->timeout_ms, b->args);
    return NULL;
}

int proc_bg_start(struct proc_bg *b, int timeout_ms, const char *const *args)
{
    size_t n = 0;
    memset(b, 0, sizeof *b);
    for (; args[n]; n++) {
        if (n == PROC_BG_MAX_ARGS)
            return -E2BIG;
        b->args[n] = args[n];
    }
    b->args[n] = NULL;
    b->timeout_ms = timeout_ms;
    int rc = pthread_create(&b->th, NULL, bg_main, b);
    if (rc)
        return -rc;
    b->running = 1;
    return 0;
}

void proc_bg_join(struct proc_bg *b)
{
    if (!b->running)
        return;
    pthread_join(b->th, NULL);
    b->running = 0;
}

void proc_result_free(struct proc_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
    r->out_len = r->err_len = 0;
}

int proc_which(const char *name, char *out, size_t outlen)
{
    static const char fallback[] = "/usr/sbin:/sbin:/usr/bin:/bin";
    const char *env = getenv("PATH");
    const char *lists[2] = {env ? env : "", fallback};
    if (!name[0] || strchr(name, '/'))
        return -ENOENT;
    for (int l = 0; l < 2; l++) {
        for (const char *p = lists[l]; *p;) {
            size_t len = strcspn(p, ":");
            /* An empty PATH entry means the current directory: skipped, a
             * test never runs a tool from there. */
            if (len > 0) {
                int k = snprintf(out, outlen, "%.*s/%s", (int)len, p, name);
                struct stat st;
                if (k > 0 && (size_t)k < outlen && stat(out, &st) == 0 && S_ISREG(st.st_mode) &&
                    access(out, X_OK) == 0)
                    return 0;
            }
            p += len;
            if (*p == ':')
                p++;
        }
    }
    if (outlen)
        out[0] = '\0';
    return -ENOENT;
}

int proc_exec(struct proc_result *r, int timeout_ms, const char *const *args)
{
    char *argv[MAX_ARGS];
    char path[PATH_MAX];
    int argc = 0;
    memset(r, 0, sizeof *r);
    if (!args[0])
        return -EINVAL;
    if (strchr(args[0], '/'))
        snprintf(path, sizeof path, "%s", args[0]);
    else if (proc_which(args[0], path, sizeof path))
        return -ENOENT;
    argv[argc++] = path;
    for (int i = 1; args[i]; i++) {
        if (argc == MAX_ARGS - 1)
            return -E2BIG;
        argv[argc++] = (char *)args[i];
    }
    argv[argc] = NULL;
    return run_argv(r, timeout_ms, argv);
}

