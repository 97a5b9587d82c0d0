// For the type check of the dashboard (tsconfig.dashboard.json): esbuild bundles the CSS import.
declare module "*.css";
