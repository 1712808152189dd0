// Builds the console into ../crates/mast-console/dist/, which the binary embeds:
//   index.html            names the two bundles below (revalidated on every load)
//   app-<hash>.js / .css  one bundle each, content-hashed (cached for good)
// Run `npm run build` after changing anything under src/, and commit dist/ with it: a build
// of Mast needs no Node.js. tests/bundle.test.mjs fails when dist/ is stale.
import { build } from 'esbuild';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const outDir = join(here, '..', 'crates', 'mast-console', 'dist');

/** Bundles src/main.tsx; returns { js, css } (file names) without writing when `write` is false. */
export async function bundle({ write = true, dir = outDir } = {}) {
  const result = await build({
    entryPoints: { app: join(here, 'src', 'main.tsx') },
    bundle: true,
    minify: true,
    format: 'esm',
    target: ['es2022'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    entryNames: '[name]-[hash]',
    outdir: dir,
    metafile: true,
    write,
    legalComments: 'linked',
    logLevel: 'warning',
  });
  const names = Object.keys(result.metafile.outputs).map((p) => basename(p));
  const js = names.find((n) => n.endsWith('.js'));
  const css = names.find((n) => n.endsWith('.css'));
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Mast console</title>
<link rel="stylesheet" href="${css}">
<script type="module" src="${js}"></script>
</head>
<body>
<div id="app"></div>
<noscript>The Mast console needs JavaScript.</noscript>
</body>
</html>
`;
  return { js, css, html, files: result.outputFiles };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  const { html } = await bundle();
  writeFileSync(join(outDir, 'index.html'), html);
  for (const f of readdirSync(outDir)) console.log(`dist/${f}`);
}
