/*
 * pam_slotwarden.so - thin PAM client of the slotwarden guard service.
 *
 * Stack (what `slotctl guard install` writes):
 *
 *   auth     requisite pam_slotwarden.so [socket=...] [timeout=500] [fail_mode=open]
 *   @include common-auth
 *   auth     optional  pam_slotwarden.so authsucc
 *   account  required  pam_slotwarden.so
 *   @include common-account
 *
 * auth (preauth): obtain the password through the conversation first (an
 *   aborted conversation or a prompt timeout is therefore never counted), then
 *   ask the service for a reservation. The service counts the reservation as a
 *   failure right away; the password is checked only if it was granted.
 *   A second try on the same handle (sshd calls pam_authenticate repeatedly)
 *   sends the earlier, unresolved token along: it failed.
 * auth authsucc: lines after an @include only run on success - release the
 *   reservation as a success (clears the pair's count).
 * cleanup (pam_end): an unresolved reservation is reported failed.
 * account: refuse while any lock holds (this also stops key logins).
 *
 * Local tries (no PAM_RHOST: su, sudo, login on a tty) carry the caller as a
 * last field, so the service counts them by who made them: the real uid when
 * it is not root (su and sudo are setuid: the kernel's word, not the
 * caller's), else PAM_RUSER (set by a root service acting for someone), else
 * the login uid, else "root" on a terminal (the console), else "root:notty".
 * A tenant's failed `su root` thus locks only (root, that tenant), never
 * root's console.
 *
 * Every field is escaped (bytes outside 0x21..0x7e and '%' become %XX) and
 * capped to 256 raw bytes ("%.." marks a cut), so a hostile PAM_USER can
 * neither break the line protocol nor make the request big.
 * If the service is unreachable: fail_mode=open -> PAM_IGNORE, closed ->
 * refuse; both are logged to syslog (authpriv). A connection the service
 * dropped before the request arrived (it sheds idle connections when out of
 * descriptors) is retried once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define PAM_SM_AUTH
#define PAM_SM_ACCOUNT
#include <security/pam_ext.h>
#include <security/pam_modules.h>

#define DEFAULT_SOCKET "/run/slotwarden/guard.sock"
#define DATA_NAME "pam_slotwarden_reservation"
#define MAX_FIELD 256
#define ESC_SIZE (MAX_FIELD * 3 + 4)
#define REPLY_SIZE 256

enum mode { MODE_PREAUTH, MODE_AUTHSUCC };

struct opts {
    char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int timeout_ms;
    int fail_closed;
    int debug;
    enum mode mode;
};

/* Lives on the PAM handle between tries; freed by cleanup(). */
struct reservation {
    long token; /* 0 = none outstanding */
    struct opts o;
};

/* A string goes into syslog only when every byte is printable ASCII. */
static const char *printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p < 0x20 || *p > 0x7e)
            return "(unprintable)";
    return s;
}

static void parse_opts(pam_handle_t *pamh, int argc, const char **argv, struct opts *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->socket, sizeof(o->socket), "%s", DEFAULT_SOCKET);
    o->timeout_ms = 500;
    o->mode = MODE_PREAUTH;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "socket=", 7) == 0) {
            snprintf(o->socket, sizeof(o->socket), "%s", a + 7);
        } else if (strncmp(a, "timeout=", 8) == 0) {
            int t = atoi(a + 8);
            if (t > 0 && t <= 60000)
                o->timeout_ms = t;
        } else if (strcmp(a, "fail_mode=closed") == 0) {
            o->fail_closed = 1;
        } else if (strcmp(a, "fail_mode=open") == 0) {
            o->fail_closed = 0;
        } else if (strcmp(a, "authsucc") == 0) {
            o->mode = MODE_AUTHSUCC;
        } else if (strcmp(a, "preauth") == 0) {
            o->mode = MODE_PREAUTH;
        } else if (strcmp(a, "debug") == 0) {
            o->debug = 1;
        } else {
            pam_syslog(pamh, LOG_ERR, "unknown option: %.64s", printable(a));
        }
    }
}

/* Escape one field exactly like pam_hooks/protocol.py:escape(). */
static void escape_field(const char *in, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0, i = 0;
    if (in == NULL)
        in = "";
    for (; in[i] != '\0' && i < MAX_FIELD; i++) {
        unsigned char b = (unsigned char)in[i];
        if (b >= 0x21 && b <= 0x7e && b != '%') {
            out[o++] = (char)b;
        } else {
            out[o++] = '%';
            out[o++] = hex[b >> 4];
            out[o++] = hex[b & 15];
        }
    }
    if (in[i] != '\0') {
        memcpy(out + o, "%..", 3);
        o += 3;
    }
    out[o] = '\0';
}

static long elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000L + (t1.tv_nsec - t0->tv_nsec) / 1000000L;
}

/* One try of ask(): 0 answered, -1 unreachable or timed out, -2 the service
 * closed the connection before it had the request (it drops idle connections
 * when out of descriptors): that request was never seen, so it may be sent again. */
static int ask_once(const struct opts *o, const char *req, char *reply, size_t replysz)
{
    struct sockaddr_un sa;
    struct timeval tv;
    struct timespec t0;
    size_t len = strlen(req), off = 0, got = 0;
    int fd, ret = -1;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    tv.tv_sec = o->timeout_ms / 1000;
    tv.tv_usec = (o->timeout_ms % 1000) * 1000;
    /* For AF_UNIX the send timeout also bounds a connect() on a full backlog. */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", o->socket);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        goto out;
    while (off < len) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE || errno == ECONNRESET)
                ret = -2;
            goto out;
        }
        off += (size_t)n;
    }
    if (reply == NULL) {
        ret = 0;
        goto out;
    }
    while (got + 1 < replysz) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long left = o->timeout_ms - elapsed_ms(&t0);
        ssize_t n;
        if (left <= 0)
            goto out;
        n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        n = recv(fd, reply + got, replysz - 1 - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if ((n == 0 || (n < 0 && errno == ECONNRESET)) && got == 0)
            ret = -2;
        if (n <= 0)
            goto out;
        got += (size_t)n;
        reply[got] = '\0';
        if (memchr(reply, '\n', got) != NULL) {
            *strchr(reply, '\n') = '\0';
            ret = 0;
            break;
        }
    }
out:
    close(fd);
    return ret;
}

/* One request line, one reply line (none when reply is NULL: fire and forget).
 * A connection dropped before the request arrived is tried once more.
 * Returns 0 on success, -1 if unreachable. */
static int ask(const struct opts *o, const char *req, char *reply, size_t replysz)
{
    int rc = ask_once(o, req, reply, replysz);
    if (rc == -2)
        rc = ask_once(o, req, reply, replysz);
    return rc == 0 ? 0 : -1;
}

/* SUCC waits for the reply, so the account check that follows sees it; FAIL does not
 * wait (the try already counts as a failure since its reservation). */
static void send_outcome(pam_handle_t *pamh, const struct opts *o, const char *verb, long token, int wait)
{
    char req[64], reply[REPLY_SIZE];
    snprintf(req, sizeof(req), "%s\t%ld\n", verb, token);
    if (ask(o, req, wait ? reply : NULL, sizeof(reply)) != 0 && pamh != NULL)
        pam_syslog(pamh, LOG_ERR, "guard service unreachable on %s: %s not recorded", o->socket, verb);
}

static void cleanup(pam_handle_t *pamh, void *data, int error_status)
{
    struct reservation *r = data;
    /* REPLACE: we never replace our own data. SILENT: a forked child ending
     * its copy of the handle; the parent still owns the reservation. */
    if (r != NULL && r->token > 0 && !(error_status & (PAM_DATA_REPLACE | PAM_DATA_SILENT)))
        send_outcome(pamh, &r->o, "FAIL", r->token, 0);
    free(r);
}

static int unreachable(pam_handle_t *pamh, const struct opts *o, const char *phase)
{
    pam_syslog(pamh, LOG_ERR, "guard service unreachable on %s during %s; fail_mode=%s",
               o->socket, phase, o->fail_closed ? "closed: refusing" : "open: allowing");
    if (!o->fail_closed)
        return PAM_IGNORE;
    return strcmp(phase, "account") == 0 ? PAM_PERM_DENIED : PAM_AUTH_ERR;
}

/* The name of uid (or "uid=N" without a passwd entry), escaped into out. */
static void uid_name(uid_t uid, char *out)
{
    struct passwd pw, *res = NULL;
    char buf[4096], num[32];
    if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) == 0 && res != NULL && res->pw_name[0] != '\0') {
        escape_field(res->pw_name, out);
        return;
    }
    snprintf(num, sizeof(num), "uid=%lu", (unsigned long)uid);
    escape_field(num, out);
}

/* The login uid of this process (-1 when unset or unreadable). */
static long login_uid(void)
{
    char buf[32];
    ssize_t n;
    int fd = open("/proc/self/loginuid", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    {
        char *end = NULL;
        unsigned long v = strtoul(buf, &end, 10);
        if (end == buf || v >= 4294967295UL)
            return -1;
        return (long)v;
    }
}

/* Who asks, for a try without PAM_RHOST (see the header comment). Only a root
 * process on a terminal, acting for nobody else, is "root" - the console way in
 * the service never locks for root and the admin group. A root service without
 * a terminal is "root:notty", and a PAM_RUSER of "root" is "root:ruser": counted,
 * never the console (no username contains ':'). */
static void caller(pam_handle_t *pamh, char *out)
{
    const void *item = NULL;
    long luid;
    if (getuid() != 0) {
        uid_name(getuid(), out);
        return;
    }
    if (pam_get_item(pamh, PAM_RUSER, &item) == PAM_SUCCESS && item != NULL && ((const char *)item)[0] != '\0') {
        escape_field(strcmp(item, "root") == 0 ? "root:ruser" : item, out);
        return;
    }
    luid = login_uid();
    if (luid > 0) {
        uid_name((uid_t)luid, out);
        return;
    }
    item = NULL;
    if (pam_get_item(pamh, PAM_TTY, &item) == PAM_SUCCESS && item != NULL && ((const char *)item)[0] != '\0')
        escape_field("root", out);
    else
        escape_field("root:notty", out);
}

/* Build "VERB\tservice\tuser\trhost" (and the caller for local tries) from the handle's items. */
static int who(pam_handle_t *pamh, char *svc, char *user, char *rhost, char *from)
{
    const void *item = NULL;
    const char *u = NULL;
    int rc = pam_get_user(pamh, &u, NULL);
    if (rc != PAM_SUCCESS || u == NULL)
        return rc == PAM_SUCCESS ? PAM_USER_UNKNOWN : rc;
    escape_field(u, user);
    item = NULL;
    pam_get_item(pamh, PAM_SERVICE, &item);
    escape_field(item, svc);
    item = NULL;
    pam_get_item(pamh, PAM_RHOST, &item);
    escape_field(item, rhost);
    from[0] = '\0';
    if (rhost[0] == '\0')
        caller(pamh, from);
    return PAM_SUCCESS;
}

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct opts o;
    struct reservation *r = NULL;
    const void *data = NULL;
    char svc[ESC_SIZE], user[ESC_SIZE], rhost[ESC_SIZE], from[ESC_SIZE], reply[REPLY_SIZE];
    char req[ESC_SIZE * 4 + 64];
    const char *tok = NULL;
    long prev = 0;
    int rc;
    (void)flags;

    parse_opts(pamh, argc, argv, &o);
    if (pam_get_data(pamh, DATA_NAME, &data) == PAM_SUCCESS)
        r = (struct reservation *)data;

    if (o.mode == MODE_AUTHSUCC) {
        if (r != NULL && r->token > 0) {
            send_outcome(pamh, &o, "SUCC", r->token, 1);
            r->token = 0;
        }
        return PAM_IGNORE;
    }

    rc = who(pamh, svc, user, rhost, from);
    if (rc != PAM_SUCCESS)
        return rc;
    /* No password, no try: a conversation that fails here is not counted. */
    rc = pam_get_authtok(pamh, PAM_AUTHTOK, &tok, NULL);
    if (rc != PAM_SUCCESS)
        return rc;

    if (r != NULL)
        prev = r->token;
    /* The 4th field is the earlier token (0: none); a local try adds its caller as a 5th. */
    if (from[0] != '\0')
        snprintf(req, sizeof(req), "AUTH\t%s\t%s\t%s\t%ld\t%s\n", svc, user, rhost, prev > 0 ? prev : 0L, from);
    else if (prev > 0)
        snprintf(req, sizeof(req), "AUTH\t%s\t%s\t%s\t%ld\n", svc, user, rhost, prev);
    else
        snprintf(req, sizeof(req), "AUTH\t%s\t%s\t%s\n", svc, user, rhost);
    if (ask(&o, req, reply, sizeof(reply)) != 0) {
        if (r != NULL)
            r->token = 0;
        return unreachable(pamh, &o, "auth");
    }
    if (r != NULL)
        r->token = 0; /* the service has marked it failed */

    if (strncmp(reply, "ALLOW ", 6) == 0) {
        long token = strtol(reply + 6, NULL, 10);
        if (token <= 0)
            return unreachable(pamh, &o, "auth");
        if (r == NULL) {
            r = calloc(1, sizeof(*r));
            if (r == NULL)
                return PAM_BUF_ERR;
            r->o = o;
            if (pam_set_data(pamh, DATA_NAME, r, cleanup) != PAM_SUCCESS) {
                free(r);
                return PAM_BUF_ERR;
            }
        }
        r->o = o;
        r->token = token;
        if (o.debug)
            pam_syslog(pamh, LOG_DEBUG, "reservation %ld for user=%s rhost=%s from=%s", token, user, rhost, from);
        return PAM_IGNORE;
    }
    if (strncmp(reply, "DENY ", 5) == 0) {
        pam_syslog(pamh, LOG_NOTICE, "refused: user=%s rhost=%s from=%s locked (%.64s)", user, rhost, from,
                   printable(reply + 5));
        /* Answer as slowly as pam_unix's failure would, so a lock is not told apart by timing. */
        pam_fail_delay(pamh, 2000000);
        return PAM_AUTH_ERR;
    }
    pam_syslog(pamh, LOG_ERR, "guard service error: %.128s", printable(reply));
    return unreachable(pamh, &o, "auth");
}

PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh;
    (void)flags;
    (void)argc;
    (void)argv;
    return PAM_IGNORE;
}

PAM_EXTERN int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct opts o;
    char svc[ESC_SIZE], user[ESC_SIZE], rhost[ESC_SIZE], from[ESC_SIZE], reply[REPLY_SIZE];
    char req[ESC_SIZE * 4 + 64];
    int rc;
    (void)flags;

    parse_opts(pamh, argc, argv, &o);
    rc = who(pamh, svc, user, rhost, from);
    if (rc != PAM_SUCCESS)
        return rc;
    if (from[0] != '\0')
        snprintf(req, sizeof(req), "ACCT\t%s\t%s\t%s\t%s\n", svc, user, rhost, from);
    else
        snprintf(req, sizeof(req), "ACCT\t%s\t%s\t%s\n", svc, user, rhost);
    if (ask(&o, req, reply, sizeof(reply)) != 0)
        return unreachable(pamh, &o, "account");
    if (strcmp(reply, "ALLOW") == 0)
        return PAM_SUCCESS;
    if (strncmp(reply, "DENY ", 5) == 0) {
        pam_syslog(pamh, LOG_NOTICE, "account refused: user=%s rhost=%s from=%s locked (%.64s)", user, rhost, from,
                   printable(reply + 5));
        return PAM_PERM_DENIED;
    }
    pam_syslog(pamh, LOG_ERR, "guard service error: %.128s", printable(reply));
    return unreachable(pamh, &o, "account");
}
