import type { Command } from 'commander'

/** `keylime policy create measured-boot`. */
export function registerMeasuredBootPolicyCommands(_policy: Command, _create: Command): void {}
