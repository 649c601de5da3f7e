/*
 * pam_slotwarden_session.so - hold each login of a slot to the slot at session open: its cgroup
 * (limits) and its seccomp filter (no btrfs subvolumes of its own).
 *
 *   session required pam_slotwarden_session.so [cgroup_root=/sys/fs/cgroup] [parent=slotwarden]
 *                                               [uids=65536-99999] [private_tmp=yes|no]
 *                                               [tmpfs_root=/var/lib/slotwarden/slot-tmp]
 *
 * Both act on the process that opens the session, before anything of the tenant's runs: sshd's
 * privileged monitor (whose unprivileged child and the tenant's shell are forked after), su's
 * and runuser's parent (the shell is forked after), cron's and atd's job child, systemd's
 * user@.service child before it becomes the user. Everything the tenant runs inherits both.
 *
 * The cgroup. On hosts without systemd (cgroup v1, or a v2 tree systemd does not own) nothing
 * else puts a login into the cgroup that carries its slot's limits. This module moves the
 * process opening the session into the slot's cgroup in every hierarchy, so the shell and all
 * its children are held to the slot's memory, CPU, process and I/O limits from the first fork.
 * The slot's cgroup is <root>/<controller>/<parent>/<user> (v1: memory, cpu, cpuacct, pids,
 * blkio) or <root>/<parent>/<user> (v2). It is made by the provisioner, root-owned: a tenant
 * cannot create one. A slot whose cgroup exists but cannot be joined is refused
 * (PAM_SESSION_ERR): a login that escapes its limits must not open. A hierarchy where the slot
 * has no directory (a slot made before the limits existed, or a systemd host where pam_systemd
 * places logins in the slot's slice) is logged and skipped; `slotctl doctor` reports it.
 *
 * The seccomp filter (slot_confine.h): a user is a slot when its uid is in uids= (the
 * provisioner's [slots] uid_min-uid_max; keep them in step) or it has a slot cgroup. Its
 * session gets the filter refusing btrfs subvolume and snapshot creation with EPERM, installed
 * without no_new_privs (the opener is root), so su, sudo and passwd keep working inside the
 * session. A slot whose filter cannot be installed is refused (PAM_SESSION_ERR). Root, staff
 * and system users (outside the range, no slot cgroup) are left alone (PAM_IGNORE).
 *
 * The private /tmp (slot_tmp.h; private_tmp=no turns it off): the same process gets a mount
 * namespace of its own in which /tmp and /var/tmp are the slot's instance directories inside its
 * home (HOME/.slot-tmp/tmp and var-tmp, root's, 1777), under the slot's quota and invisible to
 * every other slot. A slot whose private /tmp cannot be set up is refused (PAM_SESSION_ERR); a
 * slot without a home directory of its own, or whose home lies under /tmp or /var/tmp (test
 * hosts: the mount would hide it), gets none. A slot sold a /tmp size gets the instances from its
 * tmpfs under tmpfs_root= (<state_dir>/slot-tmp; see slot_tmp.h) instead; when the provisioner's
 * directory for it is there but its tmpfs is not mounted, the session is refused.
 *
 * PAM_USER is data: it must have a slot name's shape ([a-z][a-z0-9_-]{0,31}) before it becomes
 * part of a path, and it is never logged as given.
 */
#define _GNU_SOURCE
#define PAM_SM_SESSION
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <security/pam_ext.h>
#include <security/pam_modules.h>

#include "slot_confine.h"
#include "slot_tmp.h"

#define NAME_MAX_LEN 32

static const char *const CONTROLLERS[] = {"memory", "cpu", "cpuacct", "pids", "blkio", NULL};

struct options {
    const char *root;
    const char *parent;
    const char *tmpfs_root;
    unsigned long uid_min, uid_max;
    int private_tmp;
};

/* "MIN-MAX", both decimal, 1000 <= MIN < MAX < 2^31 (the provisioner's own rule for the range). */
static int parse_uids(const char *s, unsigned long *lo, unsigned long *hi) {
    char *end;
    if (s[0] < '0' || s[0] > '9')
        return -1;
    errno = 0;
    *lo = strtoul(s, &end, 10);
    if (errno != 0 || *end != '-' || end[1] < '0' || end[1] > '9')
        return -1;
    *hi = strtoul(end + 1, &end, 10);
    if (errno != 0 || *end != '\0' || *lo < 1000 || *hi <= *lo || *hi > 0x7fffffffUL)
        return -1;
    return 0;
}

static int slot_name_ok(const char *s) {
    size_t n = 0;
    if (s == NULL || !(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    for (; s[n] != '\0'; n++) {
        char c = s[n];
        if (n >= NAME_MAX_LEN)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int path_arg_ok(const char *s, int absolute) {
    if (s == NULL || s[0] == '\0' || strlen(s) > 200)
        return 0;
    if (absolute != (s[0] == '/'))
        return 0;
    if (strstr(s, "..") != NULL)
        return 0;
    for (const char *p = s; *p; p++)
        if (*p < 0x21 || *p > 0x7e)
            return 0;
    return 1;
}

static int parse_options(pam_handle_t *pamh, int argc, const char **argv, struct options *o) {
    o->root = "/sys/fs/cgroup";
    o->parent = "slotwarden";
    o->uid_min = 65536;
    o->uid_max = 99999;
    o->private_tmp = 1;
    o->tmpfs_root = SLOT_TMPFS_ROOT;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "cgroup_root=", 12) == 0)
            o->root = argv[i] + 12;
        else if (strncmp(argv[i], "parent=", 7) == 0)
            o->parent = argv[i] + 7;
        else if (strncmp(argv[i], "uids=", 5) == 0) {
            if (parse_uids(argv[i] + 5, &o->uid_min, &o->uid_max) != 0) {
                pam_syslog(pamh, LOG_ERR, "uids= must be MIN-MAX with 1000 <= MIN < MAX");
                return -1;
            }
        } else if (strncmp(argv[i], "tmpfs_root=", 11) == 0) {
            o->tmpfs_root = argv[i] + 11;
        } else if (strcmp(argv[i], "private_tmp=yes") == 0 || strcmp(argv[i], "private_tmp=no") == 0) {
            o->private_tmp = argv[i][12] == 'y';
        } else {
            pam_syslog(pamh, LOG_ERR, "unknown option (ignored)");
        }
    }
    if (!path_arg_ok(o->root, 1) || !path_arg_ok(o->parent, 0) || !path_arg_ok(o->tmpfs_root, 1)) {
        pam_syslog(pamh, LOG_ERR, "cgroup_root and tmpfs_root must be absolute and parent relative, without '..'");
        return -1;
    }
    return 0;
}

/* 1: DIR is a root-owned directory; 0: absent; -1: present but not what the provisioner makes. */
static int slot_dir(const char *dir) {
    struct stat st;
    if (lstat(dir, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode) || st.st_uid != 0)
        return -1;
    return 1;
}

static int join(const char *dir) {
    char path[PATH_MAX], pid[32];
    int n = snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return -1;
    int fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = snprintf(pid, sizeof pid, "%ld", (long)getpid());
    ssize_t w = write(fd, pid, (size_t)n);
    int saved = errno;
    close(fd);
    errno = saved;
    return w == n ? 0 : -1;
}

/* Join DIR if it exists; counts found/failed. */
static void try_join(pam_handle_t *pamh, const char *dir, int *found, int *failed) {
    int s = slot_dir(dir);
    if (s == 0)
        return;
    (*found)++;
    if (s < 0 || join(dir) != 0) {
        (*failed)++;
        pam_syslog(pamh, LOG_ERR, "cannot join the slot cgroup %s: %s", dir, s < 0 ? "not a root-owned directory"
                                                                           : strerror(errno));
    }
}

/* USER's uid and home; 0 if there is no such user. */
static int lookup(const char *user, uid_t *uid, char *home, size_t homelen) {
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwnam_r(user, &pw, buf, sizeof buf, &res) != 0 || res == NULL)
        return 0;
    *uid = pw.pw_uid;
    snprintf(home, homelen, "%s", pw.pw_dir);
    return 1;
}

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv) {
    (void)flags;
    struct options o;
    const char *user = NULL;
    char dir[PATH_MAX], probe[PATH_MAX];
    int found = 0, failed = 0, unjoined = 0;

    if (parse_options(pamh, argc, argv, &o) != 0)
        return PAM_SESSION_ERR;
    if (pam_get_item(pamh, PAM_USER, (const void **)&user) != PAM_SUCCESS || user == NULL)
        return PAM_IGNORE;
    if (!slot_name_ok(user))
        return PAM_IGNORE; /* no slot can have this name */

    snprintf(probe, sizeof probe, "%s/cgroup.controllers", o.root);
    if (access(probe, F_OK) == 0) { /* cgroup v2: one tree */
        snprintf(dir, sizeof dir, "%s/%s/%s", o.root, o.parent, user);
        try_join(pamh, dir, &found, &failed);
    } else {
        for (int i = 0; CONTROLLERS[i] != NULL; i++) {
            snprintf(probe, sizeof probe, "%s/%s/cgroup.procs", o.root, CONTROLLERS[i]);
            if (access(probe, F_OK) != 0)
                continue; /* this hierarchy is not mounted here */
            snprintf(dir, sizeof dir, "%s/%s/%s/%s", o.root, CONTROLLERS[i], o.parent, user);
            int before = found;
            try_join(pamh, dir, &found, &failed);
            if (found == before)
                unjoined++;
        }
    }
    uid_t uid = 0;
    char home[PATH_MAX];
    int known = lookup(user, &uid, home, sizeof home);
    int slot = found > 0 || (known && uid >= o.uid_min && uid <= o.uid_max);
    if (!slot)
        return PAM_IGNORE; /* not a slot (root, staff): nothing to hold it to */
    /* The filter first, before anything below can refuse the session: sudo treats
     * PAM_SESSION_ERR as non-fatal and runs the command anyway, so a refusal must never leave
     * the process unfiltered (the cgroup join and the mounts below are not syscalls it blocks). */
    int nnp = 0;
    if (slot_confine_install(&nnp) != 0) {
        pam_syslog(pamh, LOG_ERR, "slot %s: cannot install the seccomp filter (%s); session refused", user,
                   strerror(errno));
        return PAM_PERM_DENIED; /* fatal for sudo too */
    }
    if (nnp)
        pam_syslog(pamh, LOG_NOTICE, "slot %s: session opened without CAP_SYS_ADMIN; filter set with no_new_privs",
                   user);
    if (failed > 0) {
        pam_syslog(pamh, LOG_ERR, "slot %s: %d cgroup(s) could not be joined; session refused", user, failed);
        return PAM_SESSION_ERR;
    }
    if (found > 0 && unjoined > 0)
        pam_syslog(pamh, LOG_WARNING, "slot %s has no cgroup in %d hierarchies (run slotctl doctor)", user,
                   unjoined);
    if (o.private_tmp && !(known && uid != 0 && slot_tmp_applies(home, uid))) {
        pam_syslog(pamh, LOG_NOTICE, "slot %s: no home of its own outside the shared tmp dirs; no private /tmp",
                   user);
    } else if (o.private_tmp) {
        const char *what = "look the slot up";
        if (slot_tmp_enter(home, uid, o.tmpfs_root, &what) != 0) {
            pam_syslog(pamh, LOG_ERR, "slot %s: no private /tmp (cannot %s: %s); session refused", user, what,
                       strerror(errno));
            return PAM_SESSION_ERR;
        }
    }
    return PAM_SUCCESS;
}

PAM_EXTERN int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv) {
    (void)pamh;
    (void)flags;
    (void)argc;
    (void)argv;
    return PAM_SUCCESS;
}
