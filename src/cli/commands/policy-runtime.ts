import type { Command } from 'commander'

/** `keylime policy create runtime`, `keylime policy sign` (runtime-policy side). */
export function registerRuntimePolicyCommands(_policy: Command, _create: Command): void {}
