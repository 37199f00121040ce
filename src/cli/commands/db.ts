/**
 * `keylime db upgrade`: brings the verifier and registrar databases to this version outside a service start, and
 * with `--dry-run` shows what that would change: the takeover of a database upstream Keylime 7.x left
 * (src/db/takeover) and the migrations still to run. The services do the same at start when `auto_migrate_db` is on.
 */
import type { Command } from 'commander'
import { CliError, EXIT, EXIT_STATUS_HELP } from '../errors.ts'

const SERVICES = ['verifier', 'registrar'] as const
type Service = (typeof SERVICES)[number]

interface UpgradeOptions {
  service: Service | 'both'
  dryRun?: boolean
  verifierConfig?: string
  registrarConfig?: string
  databaseUrl?: string
}

async function databaseUrlOf(service: Service, opts: UpgradeOptions): Promise<string> {
  if (opts.databaseUrl !== undefined) return opts.databaseUrl
  if (service === 'verifier') {
    const { loadVerifierConfig } = await import('../../config/verifier.ts')
    return loadVerifierConfig({ configFile: opts.verifierConfig, flags: {} }).config.database_url
  }
  const { loadRegistrarConfig } = await import('../../config/registrar.ts')
  return loadRegistrarConfig({ configFile: opts.registrarConfig, flags: {} }).config.database_url
}

async function upgrade(service: Service, opts: UpgradeOptions, out: (line: string) => void): Promise<void> {
  const { openDatabase } = await import('../../db/database.ts')
  const { pendingMigrations } = await import('../../db/readiness.ts')
  const { formatTakeoverReport, planTakeover } = await import('../../db/takeover/index.ts')
  const { keylimeDir } = await import('../../config/loader.ts')
  const url = await databaseUrlOf(service, opts)
  const where = { dataDir: keylimeDir(), name: service === 'verifier' ? 'cv_data' : 'reg_data' }
  if (opts.dryRun) {
    const db = await openDatabase(url, { ...where, migrations: false })
    try {
      const report = await planTakeover(db, service)
      if (report !== null) for (const line of formatTakeoverReport(report, true)) out(line)
      const pending = await pendingMigrations(db, service)
      const rest = report === null ? pending : pending.slice(1)
      out(
        rest.length === 0
          ? `${service} database: no migration to run`
          : `${service} database: would run ${rest.join(', ')}`,
      )
    } finally {
      await db.destroy()
    }
    return
  }
  const before = await openDatabase(url, { ...where, migrations: false })
  const pending = await pendingMigrations(before, service).finally(() => before.destroy())
  let tookOver = false
  const db = await openDatabase(url, {
    ...where,
    migrations: service,
    onTakeover: (report) => {
      tookOver = true
      for (const line of formatTakeoverReport(report, false)) out(line)
    },
  })
  await db.destroy()
  const ran = tookOver ? pending.slice(1) : pending
  out(ran.length === 0 ? `${service} database: up to date` : `${service} database: ran ${ran.join(', ')}`)
}

export function registerDbCommands(program: Command): void {
  const db = program
    .command('db')
    .description('The verifier and registrar databases: take over upstream Keylime 7.x ones, run migrations')
    .addHelpText('after', `\n${EXIT_STATUS_HELP}`)
  db.command('upgrade')
    .description(
      'convert a database of upstream Keylime 7.x in place (by its Alembic revision) and run pending migrations',
    )
    .option('--service <name>', 'verifier, registrar or both', 'both')
    .option('--dry-run', 'print what would change and change nothing')
    .option('--verifier-config <file>', 'verifier.conf to read database_url from (default: the usual files)')
    .option(
      '--registrar-config <file>',
      'registrar.conf to read database_url from (default: the usual files)',
    )
    .option('--database-url <url>', "the database to upgrade (instead of the service's database_url)")
    .action(async (opts: UpgradeOptions) => {
      const chosen = opts.service === 'both' ? SERVICES : [opts.service]
      if (!chosen.every((s) => (SERVICES as readonly string[]).includes(s)))
        throw new CliError(
          `--service must be verifier, registrar or both, not ${JSON.stringify(opts.service)}`,
          EXIT.usage,
        )
      for (const service of chosen) await upgrade(service, opts, (line) => process.stdout.write(`${line}\n`))
    })
}
