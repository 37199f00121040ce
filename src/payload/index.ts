export {
  buildCertPackage,
  type CertPackage,
  type CertPackageOptions,
  REVOCATION_NOTIFIER_NAME,
  rfc4514Subject,
} from './cert-package.ts'
export { PayloadArchiveError } from './errors.ts'
export { type ExtractLimits, type ExtractResult, extractPayloadZipSafely } from './extract.ts'
export { type BuildZipOptions, buildPayloadZip, readIncludeDir, type ZipEntryInput } from './zip.ts'
