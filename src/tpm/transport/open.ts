import { TpmUsageError } from '../errors.ts'
import { DeviceTransport } from './device.ts'
import { type SocketAddress, SwtpmTransport } from './swtpm.ts'
import type { TpmTransport } from './transport.ts'

/**
 * Parses a tpm2-tools style transport spec: `device:/dev/tpmrm0`, a bare device path, `swtpm:host=H,port=P`
 * (control channel on P+1 unless `ctrl=` gives another port), `swtpm:path=/x.sock[,ctrl=/x.ctrl]`, or
 * `swtpm:` alone for tpm2-tools' default 127.0.0.1:2321.
 */
export function openTransport(spec: string): TpmTransport {
  const trimmed = spec.trim()
  if (trimmed.startsWith('/')) return new DeviceTransport(trimmed)
  const colon = trimmed.indexOf(':')
  const kind = colon < 0 ? trimmed : trimmed.slice(0, colon)
  const rest = colon < 0 ? '' : trimmed.slice(colon + 1)
  if (kind === 'device') return new DeviceTransport(rest || '/dev/tpmrm0')
  if (kind !== 'swtpm')
    throw new TpmUsageError(`unknown TPM transport "${spec}" (use device:/dev/tpmrm0 or swtpm:host=H,port=P)`)
  const options = new Map<string, string>()
  for (const part of rest.split(',').filter(Boolean)) {
    const eq = part.indexOf('=')
    if (eq < 0) throw new TpmUsageError(`malformed swtpm option "${part}" in "${spec}"`)
    options.set(part.slice(0, eq), part.slice(eq + 1))
  }
  const path = options.get('path')
  if (path) {
    const ctrl = options.get('ctrl')
    return new SwtpmTransport({ path }, ctrl ? { path: ctrl } : undefined)
  }
  const host = options.get('host') ?? '127.0.0.1'
  const port = parsePort(options.get('port') ?? '2321', spec)
  const ctrlPort = parsePort(options.get('ctrl') ?? String(port + 1), spec)
  const data: SocketAddress = { host, port }
  return new SwtpmTransport(data, { host, port: ctrlPort })
}

function parsePort(value: string, spec: string): number {
  const port = Number(value)
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new TpmUsageError(`bad port "${value}" in "${spec}"`)
  return port
}
