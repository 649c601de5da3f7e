/*
 * slot_tmp.h - a slot's private /tmp and /var/tmp, inside its home and so under its quota.
 *
 * The instance directories are HOME/.slot-tmp/tmp and HOME/.slot-tmp/var-tmp: .slot-tmp is
 * root's (0711), so the tenant can neither rename, remove nor replace the instances (it has no
 * write permission in .slot-tmp); each instance is root's, mode 1777 like /tmp. What the tenant
 * writes there is its own and counts against the slot's quota (the home's subvolume on btrfs,
 * the tenant's files on usrquota), goes with the home at removal, and is never seen by
 * another slot: the removal sweep has almost nothing left to find in the shared tmp dirs.
 *
 * The tenant owns its home, so it can rename .slot-tmp itself or put something else under that
 * name; root never follows a name it did not check: the home is opened O_NOFOLLOW and must be
 * the slot's directory, .slot-tmp is opened by descriptor (O_NOFOLLOW, O_DIRECTORY) and used only
 * if it is a root-owned directory of mode 0711 on the home's filesystem — anything else under the
 * name (a symlink, a FIFO, the tenant's own directory) is renamed aside inside the home (the
 * tenant's data stays the tenant's) and a fresh one is made. The instances are bind-mounted from
 * their descriptors (/proc/self/fd/N), never by path, nosuid and nodev, in a new mount namespace
 * of the calling process whose root is a slave of the host's (mounts made later on the host still
 * reach the session; the session's never leave it).
 *
 * A slot sold a /tmp size (a plan's tmp_size) gets the instances from a tmpfs of that size
 * instead: TMPFS_ROOT/UID (the provisioner's <state_dir>/slot-tmp/UID; TMPFS_ROOT and its parents
 * root's and not writable by tenants), mounted by root with size=, mode 0711, root-owned, holding
 * the same two root-owned 1777 instances. The directory TMPFS_ROOT/UID is made on disk by the
 * provisioner and kept while the slot has a tmp_size: it says that the slot must get its tmpfs.
 * When the directory is there but no tmpfs is mounted on it (after a reboot, before `slotctl host
 * init` has remounted it) the setup fails and the caller refuses the session (fail closed: a
 * session that fell back to the home would run on another /tmp than the slot's apps, without the
 * size the plan sells, for as long as it lasts). A slot without the directory keeps the home's.
 */
#ifndef SLOT_TMP_H
#define SLOT_TMP_H

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <linux/magic.h>

#define SLOT_TMP_DIR ".slot-tmp"
/* <state_dir>/slot-tmp of the default state_dir: where the provisioner mounts the slots' tmpfs. */
#define SLOT_TMPFS_ROOT "/var/lib/slotwarden/slot-tmp"

static const char *const SLOT_TMP_NAMES[] = {"tmp", "var-tmp"};
static const char *const SLOT_TMP_TARGETS[] = {"/tmp", "/var/tmp"};
#define SLOT_TMP_N 2

/*
 * A root-owned directory NAME of mode MODE on device DEV in DIRFD, opened (made if absent).
 * Something else under NAME is renamed aside when ASIDE, or (not ASIDE: DIRFD is root's, only
 * root put it there) brought to root:root MODE. Returns the descriptor, or -1 with errno set.
 */
static int slot_tmp_root_dir(int dirfd, const char *name, mode_t mode, dev_t dev, int aside) {
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) != 0) {
                close(fd);
                return -1;
            }
            if (st.st_dev == dev && st.st_uid == 0 && st.st_gid == 0 && (st.st_mode & 07777) == mode)
                return fd;
            if (!aside && st.st_dev == dev) {
                if (fchown(fd, 0, 0) == 0 && fchmod(fd, mode) == 0)
                    return fd;
                close(fd);
                return -1;
            }
            close(fd);
        } else if (errno != ENOENT && errno != ELOOP && errno != ENOTDIR) {
            return -1;
        }
        if (fd >= 0 || errno != ENOENT) {
            if (!aside) {
                errno = EEXIST;
                return -1;
            }
            char moved[96];
            snprintf(moved, sizeof moved, "%s.moved-%ld-%d", name, (long)time(NULL), attempt);
            if (renameat(dirfd, name, dirfd, moved) != 0 && errno != ENOENT)
                return -1;
        }
        mode_t old = umask(0);
        int made = mkdirat(dirfd, name, mode);
        int saved = errno;
        umask(old);
        if (made != 0 && saved != EEXIST) {
            errno = saved;
            return -1;
        }
    }
    errno = EAGAIN; /* the name kept changing under us */
    return -1;
}

/*
 * 1 when HOME should get a private /tmp: a directory owned by UID (what every slot's home is;
 * the tenant cannot change that, the home's entry is in the root-owned slots root) that does not
 * lie under /tmp or /var/tmp itself (a test host's slots root, never a production one: a private
 * /tmp mounted over it would hide the home from its own session). A user without such a home
 * (a system user running a program, a home being removed) gets none.
 */
static int slot_tmp_applies(const char *home, uid_t uid) {
    struct stat st;
    if (home == NULL || home[0] != '/' || lstat(home, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != uid)
        return 0;
    for (int i = 0; i < SLOT_TMP_N; i++) {
        size_t n = strlen(SLOT_TMP_TARGETS[i]);
        if (strncmp(home, SLOT_TMP_TARGETS[i], n) == 0 && (home[n] == '/' || home[n] == '\0'))
            return 0;
    }
    return 1;
}

/*
 * The slot's tmpfs TMPFS_ROOT/UID opened in *TOP (-1: the slot has none, use the home), or -1
 * with errno set and WHAT naming the step: the directory is there but holds no tmpfs of root's.
 */
static int slot_tmp_tmpfs(const char *tmpfs_root, uid_t uid, int *top, const char **what) {
    char name[24];
    struct stat st, parent;
    struct statfs fs;
    *top = -1;
    if (tmpfs_root == NULL)
        return 0;
    *what = "open the tmpfs root";
    int root_fd = open(tmpfs_root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (root_fd < 0)
        return errno == ENOENT ? 0 : -1; /* no slot of this host was ever sold a /tmp size */
    snprintf(name, sizeof name, "%lu", (unsigned long)uid);
    int fd = openat(root_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int saved = errno;
    *what = "find the slot's /tmp tmpfs mounted";
    if (fd < 0) {
        close(root_fd);
        errno = saved;
        return saved == ENOENT ? 0 : -1;
    }
    /* TMPFS_ROOT must be root's and writable by root only, or the name under it could be anyone's. */
    int ok = fstat(root_fd, &parent) == 0 && parent.st_uid == 0 && (parent.st_mode & 022) == 0 &&
             fstat(fd, &st) == 0 && fstatfs(fd, &fs) == 0 &&
             fs.f_type == TMPFS_MAGIC && st.st_dev != parent.st_dev && st.st_uid == 0 && st.st_gid == 0 &&
             (st.st_mode & 07777) == 0711;
    close(root_fd);
    if (!ok) {
        close(fd);
        errno = ENOENT; /* expected, not there (or not root's 0711 tmpfs): refuse */
        return -1;
    }
    *top = fd;
    return 0;
}

/*
 * Give the calling process a private /tmp and /var/tmp from HOME (which must be a directory
 * owned by UID), or from the slot's tmpfs under TMPFS_ROOT (may be NULL: none) when it has one.
 * Returns 0, or -1 with errno set and WHAT naming the step that failed (the caller is then in a
 * mount namespace of its own without them: it must not go on).
 */
static int slot_tmp_enter(const char *home, uid_t uid, const char *tmpfs_root, const char **what) {
    int fds[SLOT_TMP_N] = {-1, -1};
    int home_fd = -1, top = -1, rc = -1;
    struct stat st;
    char src[64];

    /* First: a bind mount's source must be a mount of the caller's own namespace, so every
     * descriptor below is opened in the new one (the same tree, copied). */
    *what = "make a mount namespace";
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0)
        goto out;
    if (slot_tmp_tmpfs(tmpfs_root, uid, &top, what) != 0)
        goto out;
    if (top >= 0) {
        *what = "check the slot's tmpfs";
        if (fstat(top, &st) != 0)
            goto out;
    } else {
        *what = "open the home";
        home_fd = open(home, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (home_fd < 0 || fstat(home_fd, &st) != 0)
            goto out;
        if (st.st_uid != uid) {
            errno = EPERM;
            goto out;
        }
        *what = "make " SLOT_TMP_DIR " in the home";
        top = slot_tmp_root_dir(home_fd, SLOT_TMP_DIR, 0711, st.st_dev, 1);
        if (top < 0)
            goto out;
    }
    *what = "make the tmp instances";
    for (int i = 0; i < SLOT_TMP_N; i++)
        if ((fds[i] = slot_tmp_root_dir(top, SLOT_TMP_NAMES[i], 01777, st.st_dev, 0)) < 0)
            goto out;
    *what = "mount the tmp instances";
    for (int i = 0; i < SLOT_TMP_N; i++) {
        snprintf(src, sizeof src, "/proc/self/fd/%d", fds[i]);
        if (mount(src, SLOT_TMP_TARGETS[i], NULL, MS_BIND, NULL) != 0 ||
            mount(NULL, SLOT_TMP_TARGETS[i], NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL) != 0)
            goto out;
    }
    rc = 0;
out:;
    int saved = errno;
    for (int i = 0; i < SLOT_TMP_N; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (top >= 0)
        close(top);
    if (home_fd >= 0)
        close(home_fd);
    errno = saved;
    return rc;
}

#endif
