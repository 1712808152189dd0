// The code editor and the diff view: CodeMirror 6 (`codemirror`'s basic setup, JSON / YAML
// modes, the lint gutter for errors, and @codemirror/merge for diffs).
import { EditorView, basicSetup } from 'codemirror';
import { EditorState, Prec, type Extension } from '@codemirror/state';
import { json } from '@codemirror/lang-json';
import { yaml } from '@codemirror/lang-yaml';
import { linter, lintGutter, setDiagnostics, type Diagnostic } from '@codemirror/lint';
import { MergeView } from '@codemirror/merge';
import { oneDark } from '@codemirror/theme-one-dark';

/** The language mode for a config format or a value that looks like JSON. */
export function language(format: string | undefined): Extension {
  switch (format) {
    case 'json':
      return json();
    case 'yaml':
      return yaml();
    default:
      return [];
  }
}

/** Guesses a value's format: JSON when it parses as an object or array; YAML when its first
 *  non-comment line is a `key: value` mapping or a `- ` list item (or a `---` document);
 *  else text. Only for highlighting: nothing is validated by this. */
export function guessFormat(text: string): string {
  const t = text.trimStart();
  if (t.startsWith('{') || t.startsWith('[')) {
    try {
      JSON.parse(text);
      return 'json';
    } catch {
      /* not JSON */
    }
  }
  const first = text.split('\n').find((l) => l.trim() && !l.trimStart().startsWith('#'));
  if (first !== undefined && /^(---\s*$|- |[\w.\-"']+:(\s|$))/.test(first.trimStart())) return 'yaml';
  return 'text';
}

/** One Dark on a darker ground: its coral (property names) is 4.4:1 on One Dark's own
 *  #282c34, 5:1 on #16191d, so every token passes WCAG AA; the active line is marked in the
 *  gutter only, for the same reason. */
const darkActiveLine = Prec.highest(
  EditorView.theme(
    {
      '&': { backgroundColor: '#16191d' },
      '.cm-gutters': { backgroundColor: '#16191d' },
      '.cm-activeLine': { backgroundColor: 'transparent' },
    },
    { dark: true },
  ),
);

function dark(): boolean {
  return document.documentElement.dataset.theme === 'dark';
}

function base(format: string | undefined, label: string, readOnly: boolean): Extension[] {
  return [
    basicSetup,
    language(format),
    EditorView.lineWrapping,
    EditorState.readOnly.of(readOnly),
    EditorView.editable.of(!readOnly),
    EditorView.contentAttributes.of({ 'aria-label': label }),
    dark() ? [oneDark, darkActiveLine] : [],
  ];
}

/** An editor in `parent`; `onChange` gets the text after every edit. */
export function createEditor(
  parent: HTMLElement,
  text: string,
  opts: { format?: string; label: string; readOnly?: boolean; onChange?: (t: string) => void },
): EditorView {
  return new EditorView({
    parent,
    doc: text,
    extensions: [
      ...base(opts.format, opts.label, !!opts.readOnly),
      lintGutter(),
      // Diagnostics come from the server's dry run, set with `showError`.
      linter(null),
      EditorView.updateListener.of((u) => {
        if (u.docChanged) opts.onChange?.(u.state.doc.toString());
      }),
    ],
  });
}

/**
 * Shows the server's refusal inline: at the line and column its message names (`line 3
 * column 5`, as the JSON, YAML and TOML parsers say), else on the first line.
 */
export function showError(view: EditorView, message: string): Diagnostic {
  const doc = view.state.doc;
  const m = /line (\d+),? column (\d+)/i.exec(message);
  let from = 0;
  if (m) {
    const line = doc.line(Math.min(Math.max(1, Number(m[1])), doc.lines));
    from = Math.min(line.from + Math.max(0, Number(m[2]) - 1), line.to);
  }
  const to = Math.min(doc.line(doc.lineAt(from).number).to, Math.max(from + 1, from));
  const d: Diagnostic = { from, to: Math.max(to, from), severity: 'error', message };
  view.dispatch(setDiagnostics(view.state, [d]));
  return d;
}

/** Clears what `showError` set. */
export function clearErrors(view: EditorView): void {
  view.dispatch(setDiagnostics(view.state, []));
}

/** A side-by-side diff of `a` (left) and `b` (right) in `parent`, read-only. */
export function createDiff(
  parent: HTMLElement,
  a: string,
  b: string,
  opts: { format?: string; labels: [string, string] },
): MergeView {
  return new MergeView({
    parent,
    a: { doc: a, extensions: base(opts.format, opts.labels[0], true) },
    b: { doc: b, extensions: base(opts.format, opts.labels[1], true) },
    collapseUnchanged: { margin: 3, minSize: 6 },
    gutter: true,
  });
}
