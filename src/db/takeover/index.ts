export * from './revisions.ts'
export * from './takeover.ts'
