/** CNI versions podvirt speaks; results are printed in whichever of these the config asks for. */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const CURRENT_VERSION = '1.1.0';

function parts(v: string): number[] | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)$/.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

/** Semver-style comparison of two `x.y.z` versions; unparsable versions sort first. */
export function compareVersions(a: string, b: string): number {
  const pa = parts(a) ?? [-1, 0, 0];
  const pb = parts(b) ?? [-1, 0, 0];
  for (let i = 0; i < 3; i++) if (pa[i] !== pb[i]) return (pa[i] ?? 0) - (pb[i] ?? 0);
  return 0;
}

export function isSupportedVersion(v: string): boolean {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** Highest version present in both lists (libcni's rule for `cniVersions`). */
export function highestCommon(ours: readonly string[], theirs: readonly string[]): string | undefined {
  return theirs
    .filter((v) => ours.includes(v))
    .sort(compareVersions)
    .pop();
}
