import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const ROOT = join(import.meta.dirname, '../..')
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  engines: { node: string }
  bin: Record<string, string>
  files: string[]
  dependencies: Record<string, string>
  scripts: Record<string, string>
}

describe('package.json', () => {
  it('declares the Node.js versions it runs on, and this one is among them', () => {
    const min = /^>=(\d+)\.(\d+)$/.exec(pkg.engines.node)
    expect(min, pkg.engines.node).not.toBeNull()
    const [major, minor] = process.versions.node.split('.').map(Number) as [number, number]
    const [wantMajor, wantMinor] = [Number(min?.[1]), Number(min?.[2])]
    expect(major > wantMajor || (major === wantMajor && minor >= wantMinor)).toBe(true)
  })

  it('ships the compiled CLI and needs no TypeScript tooling at run time', () => {
    expect(pkg.bin).toEqual({ keylime: 'bin/keylime.js' })
    expect(pkg.files).toEqual(expect.arrayContaining(['bin/', 'dist/', 'LICENSE']))
    for (const tool of ['tsx', 'typescript', 'esbuild']) expect(pkg.dependencies).not.toHaveProperty(tool)
    expect(pkg.scripts.prepare).toBe('npm run build')
  })
})
