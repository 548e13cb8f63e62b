/*
 * trap_sites.h — the int3 bytes a commit places while it writes a jump without stopping every
 * thread at once (struct polus_trap_site in polus/agent_abi.h; the engine's side:
 * injector/src/update/trap_commit). Internal to libpolus-agent.so.
 */
#ifndef POLUS_AGENT_TRAP_SITES_H
#define POLUS_AGENT_TRAP_SITES_H

#include <signal.h>
#include <ucontext.h>

#pragma GCC visibility push(hidden)

/* From the SIGTRAP handler, first: 1 if this trap was an int3 of a trap site (the thread now
 * goes where the site says, or, if the site was cleared meanwhile, runs what is there now),
 * 0 if it is not ours and goes on to the previous disposition. */
int trap_site_redirect(const siginfo_t *si, ucontext_t *uc);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_TRAP_SITES_H */
