// Vite builds the page into dist/ (`npm run build`); `base: "./"` lets it be served from any path.
// esbuild compiles the JSX with React's automatic runtime, so no Babel plugin is needed.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", emptyOutDir: true },
});
