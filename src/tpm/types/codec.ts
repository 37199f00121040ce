import type { TpmReader } from '../marshal/reader.ts'
import type { TpmWriter } from '../marshal/writer.ts'

/** A structure's wire codec: the const that shares its name with the structure's interface. */
export interface Codec<T> {
  readonly name: string
  decode(r: TpmReader): T
  encode(w: TpmWriter, value: T): void
}
