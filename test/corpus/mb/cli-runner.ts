/** Runs only the measured-boot CLI commands (independent of the rest of the command tree). */
import { Command } from 'commander'
import { registerEventlogCommand } from '../../../src/cli/commands/eventlog.ts'
import { registerMeasuredBootPolicyCommands } from '../../../src/cli/commands/policy-measured-boot.ts'

const program = new Command('keylime')
registerEventlogCommand(program)
const policy = program.command('policy')
registerMeasuredBootPolicyCommands(policy, policy.command('create'))
await program.parseAsync(process.argv)
