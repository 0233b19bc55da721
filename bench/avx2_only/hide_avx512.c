/* Preloaded into a process (LD_PRELOAD), hides AVX-512, VNNI and AMX from the cpuid instruction, so the numeric
   libraries (oneDNN in torch and OpenVINO, ONNX Runtime's MLAS) take the code paths they take on an AVX2-only CPU.

   Linux CPUID faulting (arch_prctl ARCH_SET_CPUID, the CPU's "cpuid_fault" flag) makes every cpuid a SIGSEGV; the
   handler runs the real instruction with faulting briefly off and answers with those feature bits cleared. The
   setting is inherited by threads and forked children and reset by exec, where LD_PRELOAD sets it again. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static struct sigaction previous;

#define BIT(n) (1u << (n))

/* Leaf 7.0: EBX AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL; ECX VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ;
   EDX 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8.
   Leaf 7.1: EAX AVX-VNNI, AVX512-BF16, AMX-FP16, AVX-IFMA; EDX AVX-VNNI-INT8, AVX-NE-CONVERT, AVX10.
   Leaf 0xD.0: the AVX-512 and AMX state components. */
static void hide(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
  if (leaf == 7 && sub == 0) {
    *b &= ~(BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31));
    *c &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14));
    *d &= ~(BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25));
  } else if (leaf == 7 && sub == 1) {
    *a &= ~(BIT(4) | BIT(5) | BIT(21) | BIT(23));
    *d &= ~(BIT(4) | BIT(5) | BIT(19));
  } else if (leaf == 0xd && sub == 0) {
    *a &= ~(BIT(5) | BIT(6) | BIT(7) | BIT(17) | BIT(18));
  }
}

static void on_fault(int sig, siginfo_t *info, void *context) {
  greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)r[REG_RIP];
  /* a faulting cpuid comes from the kernel (SI_KERNEL); a bad address (SEGV_MAPERR, SEGV_ACCERR) goes on as it was */
  if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
    uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, sub, a, b, c, d);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    hide(leaf, sub, &a, &b, &c, &d);
    r[REG_RAX] = a, r[REG_RBX] = b, r[REG_RCX] = c, r[REG_RDX] = d;
    r[REG_RIP] += 2;
    return;
  }
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(sig, info, context);
  } else if (previous.sa_handler != SIG_IGN && previous.sa_handler != SIG_DFL) {
    previous.sa_handler(sig);
  } else {
    signal(SIGSEGV, SIG_DFL);
    raise(SIGSEGV);
  }
}

__attribute__((constructor)) static void start(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &previous);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    fprintf(stderr, "hide_avx512: this CPU or kernel has no CPUID faulting; the process would see every feature\n");
    exit(2);
  }
}
