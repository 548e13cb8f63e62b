#include "process/signal_frame.h"

#include <cpuid.h>
#include <signal.h>

#include <algorithm>

#include <cstddef>
#include <cstring>

#include "polus/error.h"

namespace polus {

namespace {

// The kernel's x86-64 signal frame (arch/x86/include/asm/sigframe.h, uapi asm/sigcontext.h,
// asm-generic/ucontext.h): glibc's ucontext_t is larger (a 1024-bit sigset), so the layout is
// spelled out here.
struct KernelSigcontext {
  uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
  uint64_t di, si, bp, bx, dx, ax, cx, sp, ip, flags;
  uint16_t cs, gs, fs, ss;
  uint64_t err, trapno, oldmask, cr2;
  uint64_t fpstate;  // user address of the XSAVE area, 64-byte aligned
  uint64_t reserved1[8];
};
static_assert(sizeof(KernelSigcontext) == 256);

struct KernelStack {
  uint64_t sp;
  int32_t flags;
  int32_t pad;
  uint64_t size;
};

struct KernelUcontext {
  uint64_t flags;
  uint64_t link;
  KernelStack stack;
  KernelSigcontext mcontext;
  uint64_t sigmask;
};
static_assert(sizeof(KernelUcontext) == kResultOffset);

struct KernelRtSigframe {
  uint64_t pretcode;
  KernelUcontext uc;
  uint8_t info[128];  // siginfo: unused by rt_sigreturn; the return stub keeps rax here
};
static_assert(offsetof(KernelRtSigframe, info) - offsetof(KernelRtSigframe, uc) == kResultOffset);

constexpr uint64_t kUcFpXstate = 0x1, kUcSigcontextSs = 0x2, kUcStrictRestoreSs = 0x4;
constexpr uint32_t kFpXstateMagic1 = 0x46505853, kFpXstateMagic2 = 0x46505845;
constexpr size_t kSwReservedOffset = 464;  // struct _fpx_sw_bytes inside the FXSAVE area

// Error numbers the kernel keeps to itself (include/linux/errno.h).
constexpr long kRestartSys = 512, kRestartNoIntr = 513, kRestartNoHand = 514, kRestartBlock = 516;

constexpr uint64_t kXfeatureTileData = 1ull << 18;  // AMX tile data: the one dynamic feature

/// The end of the XSAVE image's last component among `features` (standard format: CPUID
/// leaf 0xD sub-leaf i gives component i's size in EAX and offset in EBX).
uint32_t non_dynamic_xstate_size(uint64_t features) {
  uint32_t end = 512 + 64;  // legacy area and XSAVE header
  for (unsigned i = 2; i < 63; ++i) {
    if (!(features & (1ull << i))) continue;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(0xd, i, &eax, &ebx, &ecx, &edx) || eax == 0) continue;
    if (ecx & 1) continue;  // a supervisor component: not in a user image
    end = std::max(end, ebx + eax);
  }
  return end;
}

}  // namespace

user_regs_struct restarted_regs(const user_regs_struct& saved) {
  user_regs_struct regs = saved;
  if (static_cast<long>(saved.orig_rax) >= 0) {
    long result = -static_cast<long>(saved.rax);
    // -ERESTART_RESTARTBLOCK (nanosleep, poll with a timeout, futex waits with a timeout)
    // would become restart_syscall, but rt_sigreturn resets the thread's restart block
    // (restore_sigcontext: restart_block.fn = do_no_restart_syscall), so that would return
    // EINTR. The original call is made again instead: an absolute timeout is kept exactly, a
    // relative one starts over (a longer wait, never an EINTR the application did not cause).
    if (result == kRestartSys || result == kRestartNoIntr || result == kRestartNoHand || result == kRestartBlock) {
      regs.rax = saved.orig_rax;
      regs.rip -= 2;
    }
  }
  regs.orig_rax = static_cast<unsigned long long>(-1);
  return regs;
}

SignalFrame write_signal_frame(ProcessMemory& memory, const SavedContext& context, uint64_t below_sp,
                               uint64_t return_address) {
  // NT_X86_XSTATE is the XSAVE image; the kernel keeps XCR0 in the first word of its
  // software-reserved bytes for debuggers (arch/x86/kernel/fpu/regset.c). A signal frame's
  // software bytes instead say that an XSAVE image follows and how large it is
  // (struct _fpx_sw_bytes, checked by check_xstate_in_sigframe()): fill them in.
  const uint32_t xstate_size = static_cast<uint32_t>(context.xstate.size());
  if (xstate_size < 512 + 64) {
    throw Error(ErrorCode::kInternal, "the kernel reported " + std::to_string(xstate_size) +
                                          " bytes of vector state, too few for an XSAVE image; Polus cannot "
                                          "return from injected code through rt_sigreturn on this system");
  }
  std::vector<uint8_t> fp(context.xstate);
  uint64_t xfeatures = 0;
  std::memcpy(&xfeatures, fp.data() + kSwReservedOffset, 8);
  if (xfeatures == 0) xfeatures = ~uint64_t{0};  // the kernel keeps only what it supports
  // NT_X86_XSTATE is as large as every feature the CPU has, AMX tile data included; a signal
  // frame larger than the thread's own buffer (which has no room for tiles unless the process
  // asked for AMX) is refused by check_xstate_in_sigframe(), and the kernel then restores
  // FP/SSE only — AVX, AVX-512 and PKRU would come back at their initial values. Without tile
  // data in use, the frame carries the image up to the last non-dynamic feature only.
  uint64_t xstate_bv = 0;
  std::memcpy(&xstate_bv, fp.data() + 512, 8);
  uint32_t frame_size = xstate_size;
  if (!(xstate_bv & kXfeatureTileData) && (xfeatures & kXfeatureTileData)) {
    frame_size = std::min(frame_size, non_dynamic_xstate_size(xfeatures & ~kXfeatureTileData));
    xfeatures &= ~kXfeatureTileData;
  }
  fp.resize(frame_size);
  const uint32_t extended_size = frame_size + 4;
  std::memset(fp.data() + kSwReservedOffset, 0, 48);
  std::memcpy(fp.data() + kSwReservedOffset, &kFpXstateMagic1, 4);
  std::memcpy(fp.data() + kSwReservedOffset + 4, &extended_size, 4);
  std::memcpy(fp.data() + kSwReservedOffset + 8, &xfeatures, 8);
  std::memcpy(fp.data() + kSwReservedOffset + 16, &frame_size, 4);
  fp.resize(extended_size);
  std::memcpy(fp.data() + frame_size, &kFpXstateMagic2, 4);

  // Leave the red zone (128 bytes below rsp) and some slack untouched.
  uint64_t fpstate = (below_sp - 512 - extended_size) & ~uint64_t{63};
  // As the kernel places a handler's frame (get_sigframe): (frame + 8) 16-byte aligned, as at
  // any function's entry.
  uint64_t frame = ((fpstate - sizeof(KernelRtSigframe)) & ~uint64_t{15}) - 8;

  const user_regs_struct r = restarted_regs(context.regs);
  KernelRtSigframe f{};
  f.pretcode = return_address;
  f.uc.flags = kUcFpXstate | kUcSigcontextSs | kUcStrictRestoreSs;
  // An invalid mode makes rt_sigreturn's restore_altstack() leave the thread's alternate
  // signal stack as it is (do_sigaltstack returns -EINVAL before changing anything).
  f.uc.stack.flags = 3;
  KernelSigcontext& sc = f.uc.mcontext;
  sc.r8 = r.r8, sc.r9 = r.r9, sc.r10 = r.r10, sc.r11 = r.r11, sc.r12 = r.r12, sc.r13 = r.r13, sc.r14 = r.r14;
  sc.r15 = r.r15, sc.di = r.rdi, sc.si = r.rsi, sc.bp = r.rbp, sc.bx = r.rbx, sc.dx = r.rdx, sc.ax = r.rax;
  sc.cx = r.rcx, sc.sp = r.rsp, sc.ip = r.rip, sc.flags = r.eflags;
  sc.cs = static_cast<uint16_t>(r.cs), sc.ss = static_cast<uint16_t>(r.ss);
  sc.fs = static_cast<uint16_t>(r.fs), sc.gs = static_cast<uint16_t>(r.gs);
  sc.fpstate = fpstate;
  f.uc.sigmask = context.signal_mask;

  memory.write_bytes(RemoteAddr(fpstate), fp.data(), fp.size());
  memory.write_bytes(RemoteAddr(frame), &f, sizeof f);
  return SignalFrame{frame, frame + 8 + kResultOffset, frame, below_sp, return_address};
}

void rewrite_signal_frame(ProcessMemory& memory, const SavedContext& context, const SignalFrame& frame) {
  SignalFrame again = write_signal_frame(memory, context, frame.below_sp, frame.return_address);
  if (again.frame != frame.frame) throw Error(ErrorCode::kInternal, "a signal frame moved when written again");
}

void set_frame_signal_mask(ProcessMemory& memory, const SignalFrame& frame, uint64_t mask) {
  memory.write(RemotePtr<uint64_t>(frame.frame + offsetof(KernelRtSigframe, uc) + offsetof(KernelUcontext, sigmask)),
               mask);
}

}  // namespace polus
