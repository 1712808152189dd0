// parse-prometheus-text-format ships no types: its output, as prom2json's.
declare module 'parse-prometheus-text-format' {
  export interface Sample {
    labels?: Record<string, string>;
    value?: string;
    buckets?: Record<string, string>;
    count?: string;
    sum?: string;
  }
  export interface Family {
    name: string;
    help: string;
    type: string;
    metrics: Sample[];
  }
  export default function parse(text: string): Family[];
}

// Stylesheets imported for esbuild to bundle.
declare module '*.css';
