export * from './database.ts'
export * from './migrations/index.ts'
export * from './registrar-repository.ts'
