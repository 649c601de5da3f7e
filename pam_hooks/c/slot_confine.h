/*
 * slot_confine.h - the seccomp filter every process of a slot runs under (issue 12).
 *
 * A tenant may make btrfs subvolumes and snapshots with its own ioctl, unprivileged, and
 * BTRFS_IOC_*_CREATE_V2 lets it choose the qgroups the new subvolume joins (an empty inherit
 * list: none, so no cap; another slot's qgroup: charged to someone else). The filter refuses
 * these ioctls with EPERM, so the only subvolumes on the slots filesystem are the ones root
 * makes. `slotctl doctor` keeps checking for escaped subvolumes as the second line.
 *
 * Refused (cmd compared on its low 32 bits, as the kernel reads it: an `unsigned int`, so
 * garbage in the upper half of the register cannot slip past):
 *   BTRFS_IOC_SNAP_CREATE, BTRFS_IOC_SUBVOL_CREATE, BTRFS_IOC_SNAP_CREATE_V2,
 *   BTRFS_IOC_SUBVOL_CREATE_V2 - the ways an unprivileged user makes a subvolume;
 *   BTRFS_IOC_QUOTA_CTL, _QGROUP_ASSIGN, _QGROUP_CREATE, _QGROUP_LIMIT, _QUOTA_RESCAN,
 *   BTRFS_IOC_SET_RECEIVED_SUBVOL, BTRFS_IOC_DEFAULT_SUBVOL - root-only already; refused too
 *   so that no setuid program run inside a slot's session can reach them either.
 * On every ABI the kernel accepts here: x86-64, x32 and i386 (the struct sizes, hence the
 * numbers, are the same), aarch64 and its 32-bit arm compat. Anything else is allowed: the
 * filter never breaks a program that makes no btrfs subvolume.
 *
 * Installed without no_new_privs when the caller holds CAP_SYS_ADMIN (sshd's monitor, su, cron
 * at session open; the app wrapper before it drops to the slot user), so setuid programs keep
 * working inside the session; with no_new_privs otherwise (a unit already running as the slot
 * user, where systemd sets NoNewPrivileges= anyway). SECCOMP_FILTER_FLAG_TSYNC: every thread of
 * the caller, or none. A filter is inherited by every child and can never be removed.
 */
#ifndef SLOT_CONFINE_H
#define SLOT_CONFINE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/btrfs.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#define SC_ARCH_NR offsetof(struct seccomp_data, arch)
#define SC_SYSCALL_NR offsetof(struct seccomp_data, nr)
/* The low word of args[1] (the ioctl cmd) on a little-endian machine. */
#define SC_ARG1_LO offsetof(struct seccomp_data, args[1])

#if defined(__x86_64__)
#define SC_NATIVE_ARCH AUDIT_ARCH_X86_64
#define SC_NATIVE_IOCTL 16
#define SC_X32_IOCTL (0x40000000u | 514u) /* x32's compat ioctl */
#define SC_X32_IOCTL_64 (0x40000000u | 16u)
#define SC_COMPAT_ARCH AUDIT_ARCH_I386
#define SC_COMPAT_IOCTL 54
#elif defined(__aarch64__)
#define SC_NATIVE_ARCH AUDIT_ARCH_AARCH64
#define SC_NATIVE_IOCTL 29
#define SC_X32_IOCTL 29 /* no x32 here: the same test again */
#define SC_X32_IOCTL_64 29
#define SC_COMPAT_ARCH AUDIT_ARCH_ARM
#define SC_COMPAT_IOCTL 54
#else
#error "slot_confine.h: add this architecture's audit arch and ioctl numbers"
#endif

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "slot_confine.h reads the low word of args[1] at its little-endian offset"
#endif

static const uint32_t SLOT_CONFINE_REFUSED[] = {
    BTRFS_IOC_SNAP_CREATE,    BTRFS_IOC_SUBVOL_CREATE,   BTRFS_IOC_SNAP_CREATE_V2,
    BTRFS_IOC_SUBVOL_CREATE_V2, BTRFS_IOC_QUOTA_CTL,     BTRFS_IOC_QGROUP_ASSIGN,
    BTRFS_IOC_QGROUP_CREATE,  BTRFS_IOC_QGROUP_LIMIT,    BTRFS_IOC_QUOTA_RESCAN,
    BTRFS_IOC_SET_RECEIVED_SUBVOL, BTRFS_IOC_DEFAULT_SUBVOL,
};
#define SLOT_CONFINE_N_REFUSED (sizeof SLOT_CONFINE_REFUSED / sizeof SLOT_CONFINE_REFUSED[0])

/* 1 if the caller holds CAP_SYS_ADMIN in its effective set (may install without no_new_privs). */
static int slot_confine_privileged(void) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &hdr, data) != 0)
        return 0;
    return (data[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective & CAP_TO_MASK(CAP_SYS_ADMIN)) != 0;
}

/* Jump offset from instruction AT to instruction TO (classic BPF jumps are relative). */
#define SC_J(at, to) ((uint8_t)((to) - (at) - 1))

/*
 * Install the filter on the calling process (all its threads). Returns 0, or -1 with errno set.
 * *NNP (if not NULL) says whether no_new_privs had to be set.
 */
static int slot_confine_install(int *nnp) {
    enum { COMPAT = 6, CHECK = 9, ALLOW = CHECK + 1 + (int)SLOT_CONFINE_N_REFUSED, DENY = ALLOW + 1 };
    struct sock_filter f[DENY + 1] = {
        [0] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SC_ARCH_NR),
        [1] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SC_NATIVE_ARCH, 0, SC_J(1, COMPAT)),
        [2] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SC_SYSCALL_NR),
        [3] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SC_NATIVE_IOCTL, SC_J(3, CHECK), 0),
        [4] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SC_X32_IOCTL, SC_J(4, CHECK), 0),
        [5] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SC_X32_IOCTL_64, SC_J(5, CHECK), SC_J(5, ALLOW)),
        [COMPAT] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SC_COMPAT_ARCH, 0, SC_J(COMPAT, ALLOW)),
        [7] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SC_SYSCALL_NR),
        [8] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SC_COMPAT_IOCTL, SC_J(8, CHECK), SC_J(8, ALLOW)),
        [CHECK] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SC_ARG1_LO),
        [ALLOW] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        [DENY] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    };
    for (int i = 0; i < (int)SLOT_CONFINE_N_REFUSED; i++)
        f[CHECK + 1 + i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SLOT_CONFINE_REFUSED[i],
                                                        SC_J(CHECK + 1 + i, DENY), 0);
    struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof f[0]), f};

    int need_nnp = !slot_confine_privileged();
    if (nnp != NULL)
        *nnp = need_nnp;
    if (need_nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
    if (r > 0) /* TSYNC answers the id of a thread it could not synchronise */
        errno = EBUSY;
    return r == 0 ? 0 : -1;
}

#endif
