// The committed bundle (crates/mast-console/dist/, which the binary embeds) is what the sources
// build to now: a change under src/ without `npm run build` fails here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bundle, outDir } from '../build.mjs';

test('dist/ is built from the current sources', async () => {
  const fresh = await bundle({ write: false });
  const committed = readdirSync(outDir).sort();
  assert.deepEqual(committed, [fresh.css, fresh.js, 'index.html'].sort(), 'run `npm run build` in console/ and commit dist/');
  assert.equal(readFileSync(join(outDir, 'index.html'), 'utf8'), fresh.html);
  for (const f of fresh.files) {
    const name = f.path.split('/').pop();
    assert.ok(readFileSync(join(outDir, name)).equals(Buffer.from(f.contents)), `${name} differs`);
  }
});
