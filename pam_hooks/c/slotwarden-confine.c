/*
 * slotwarden-confine - run a slot's program under the slot's seccomp filter (slot_confine.h).
 *
 *   slotwarden-confine --user NAME [--tmpfs-root DIR] -- PROGRAM [ARG...]
 *                                       (as root: filter, private /tmp, become NAME)
 *   slotwarden-confine -- PROGRAM [ARG...]               (as the slot user already: filter)
 *
 * Apps reach the tenant's code without a PAM session: supervisord starts each program through
 * this wrapper as root (after the program joined its slot's cgroups), which installs the
 * filter while it still holds CAP_SYS_ADMIN (no no_new_privs: setuid programs keep working),
 * gives it the slot's private /tmp and /var/tmp (slot_tmp.h, the same instances as the slot's
 * logins; from the slot's tmpfs under DIR, default SLOT_TMPFS_ROOT, when it was sold a /tmp size,
 * refusing to start when that tmpfs is expected but not mounted), then drops to NAME's uid, gid
 * and supplementary groups (initgroups) and execs PROGRAM.
 * systemd units run it as User= with NoNewPrivileges=yes: the filter is installed with
 * no_new_privs (and systemd's PrivateTmp=). A user without a home directory of its own (see
 * slot_tmp_applies) gets no private /tmp. NAME must not be root or have gid 0. PROGRAM is looked up on PATH only when it
 * has no slash. Nothing of NAME's is read or executed before the drop.
 *
 * Exit status: 2 on a usage error, 1 when the filter or the drop fails, 126/127 when PROGRAM
 * cannot be executed; otherwise PROGRAM's own. Errors are one line on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "slot_confine.h"
#include "slot_tmp.h"

static int usage(void) {
    fputs("usage: slotwarden-confine [--user NAME [--tmpfs-root DIR]] -- PROGRAM [ARG...]\n", stderr);
    return 2;
}

static int drop_to(const char *name, const char *tmpfs_root) {
    errno = 0;
    struct passwd *pw = getpwnam(name);
    const char *what = "set up the private /tmp";
    if (pw == NULL) {
        fprintf(stderr, "slotwarden-confine: no such user (%s)\n", errno ? strerror(errno) : "unknown name");
        return -1;
    }
    if (pw->pw_uid == 0 || pw->pw_gid == 0) {
        fputs("slotwarden-confine: refusing to run a slot program as uid or gid 0\n", stderr);
        return -1;
    }
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (slot_tmp_applies(pw->pw_dir, uid) && slot_tmp_enter(pw->pw_dir, uid, tmpfs_root, &what) != 0) {
        fprintf(stderr, "slotwarden-confine: no private /tmp (cannot %s: %s)\n", what, strerror(errno));
        return -1;
    }
    if (initgroups(pw->pw_name, gid) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
        fprintf(stderr, "slotwarden-confine: cannot become the slot user: %s\n", strerror(errno));
        return -1;
    }
    if (setuid(0) == 0 || geteuid() != uid || getegid() != gid) {
        fputs("slotwarden-confine: the drop to the slot user did not hold\n", stderr);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *user = NULL, *tmpfs_root = SLOT_TMPFS_ROOT;
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "--user") == 0) {
        user = argv[i + 1];
        i += 2;
        if (i + 1 < argc && strcmp(argv[i], "--tmpfs-root") == 0) {
            tmpfs_root = argv[i + 1];
            if (tmpfs_root[0] != '/')
                return usage();
            i += 2;
        }
    }
    if (i >= argc || strcmp(argv[i], "--") != 0 || i + 1 >= argc || argv[i + 1][0] == '\0')
        return usage();
    char **prog = argv + i + 1;

    if (user != NULL && geteuid() != 0) {
        fputs("slotwarden-confine: --user needs root (run it as the slot user without --user)\n", stderr);
        return 1;
    }
    if (slot_confine_install(NULL) != 0) {
        fprintf(stderr, "slotwarden-confine: cannot install the seccomp filter: %s\n", strerror(errno));
        return 1;
    }
    if (user != NULL && drop_to(user, tmpfs_root) != 0)
        return 1;
    execvp(prog[0], prog);
    int e = errno;
    fprintf(stderr, "slotwarden-confine: cannot execute the program: %s\n", strerror(e));
    return e == ENOENT ? 127 : 126;
}
