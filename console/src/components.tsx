// Small shared pieces: the CodeMirror hosts, error and status lines, a confirmation dialog.
import { useEffect, useRef, useState } from 'preact/hooks';
import type { ComponentChildren } from 'preact';
import type { EditorView } from 'codemirror';
import { createDiff, createEditor } from './editor';

/** A read-only or editable code view. `viewRef` receives the CodeMirror view. */
export function Code(props: {
  text: string;
  format?: string;
  label: string;
  readOnly?: boolean;
  onChange?: (t: string) => void;
  viewRef?: { current: EditorView | null };
}) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const view = createEditor(host.current!, props.text, {
      format: props.format,
      label: props.label,
      readOnly: props.readOnly,
      onChange: props.onChange,
    });
    if (props.viewRef) props.viewRef.current = view;
    return () => view.destroy();
    // A new text or format makes a new editor; edits stay inside the editor.
  }, [props.text, props.format, props.readOnly]);
  return <div class="code" ref={host} />;
}

/** A side-by-side diff. */
export function Diff(props: { a: string; b: string; format?: string; labels: [string, string] }) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const v = createDiff(host.current!, props.a, props.b, { format: props.format, labels: props.labels });
    return () => v.destroy();
  }, [props.a, props.b, props.format]);
  return (
    <div class="diff">
      <div class="diff-labels" aria-hidden="true">
        <span>{props.labels[0]}</span>
        <span>{props.labels[1]}</span>
      </div>
      <div ref={host} />
    </div>
  );
}

/** An error line (role=alert, so screen readers announce it). */
export function ErrorLine(props: { error: unknown }) {
  if (!props.error) return null;
  const message = props.error instanceof Error ? props.error.message : String(props.error);
  return (
    <p class="error" role="alert">
      {message}
    </p>
  );
}

/** A modal dialog (the native <dialog>, so focus and Escape behave). */
export function Dialog(props: { title: string; open: boolean; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current!;
    if (props.open && !d.open) d.showModal();
    if (!props.open && d.open) d.close();
  }, [props.open]);
  return (
    <dialog ref={ref} aria-label={props.title} onClose={props.onClose} class="dialog">
      <h2>{props.title}</h2>
      {props.open && props.children}
    </dialog>
  );
}

/** Runs `load` now and whenever `deps` change; answers [value, error, reload]. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): [T | undefined, unknown, () => void] {
  const [value, setValue] = useState<T>();
  const [error, setError] = useState<unknown>();
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    setError(undefined);
    load().then(
      (v) => live && setValue(v),
      (e) => live && setError(e),
    );
    return () => {
      live = false;
    };
  }, [...deps, n]);
  return [value, error, () => setN((x) => x + 1)];
}

/** Milliseconds since the epoch as local date and time. */
export function when(ms: number | string | undefined): string {
  if (!ms) return '';
  return new Date(Number(ms)).toLocaleString();
}

/** Bytes as B / KiB / MiB / GiB. */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
