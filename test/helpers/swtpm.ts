/** The test suite's swtpm harness is the development one the demo uses. */
export * from '../../src/devtools/swtpm.ts'
