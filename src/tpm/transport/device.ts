import { constants, type FileHandle, open } from 'node:fs/promises'
import { TpmTransportError } from '../errors.ts'
import { expectedResponseLength, MAX_RESPONSE_SIZE, type TpmTransport } from './transport.ts'

/**
 * Linux TPM character device (`/dev/tpmrm0` through the kernel resource manager, or `/dev/tpm0` directly):
 * one write of the whole command, then one read returns the whole response.
 */
export class DeviceTransport implements TpmTransport {
  private handle: FileHandle | undefined
  private readonly buffer = new Uint8Array(MAX_RESPONSE_SIZE)
  readonly description: string

  constructor(readonly path: string) {
    this.description = `device:${path}`
  }

  private async file(): Promise<FileHandle> {
    if (this.handle) return this.handle
    try {
      this.handle = await open(this.path, constants.O_RDWR)
      return this.handle
    } catch (err) {
      throw new TpmTransportError(`cannot open TPM device ${this.path}: ${(err as Error).message}`, {
        cause: err,
      })
    }
  }

  async send(command: Uint8Array): Promise<Uint8Array> {
    const fh = await this.file()
    try {
      const { bytesWritten } = await fh.write(command, 0, command.length, null)
      if (bytesWritten !== command.length) {
        throw new TpmTransportError(`short write to ${this.path}: ${bytesWritten}/${command.length} bytes`)
      }
      const { bytesRead } = await fh.read(this.buffer, 0, this.buffer.length, null)
      const response = this.buffer.slice(0, bytesRead)
      const expected = expectedResponseLength(response)
      if (expected === undefined || expected !== bytesRead) {
        throw new TpmTransportError(`incomplete response from ${this.path}: ${bytesRead} bytes`)
      }
      return response
    } catch (err) {
      if (err instanceof TpmTransportError) throw err
      throw new TpmTransportError(`TPM device ${this.path} I/O failed: ${(err as Error).message}`, {
        cause: err,
      })
    }
  }

  async close(): Promise<void> {
    const fh = this.handle
    this.handle = undefined
    await fh?.close()
  }
}
