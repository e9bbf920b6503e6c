// Syntax check of PowerShell scripts with the tree-sitter PowerShell grammar (npm packages
// web-tree-sitter and tree-sitter-powershell), for a CI machine without PowerShell: Debian has
// no package for it. The grammar is not PowerShell's own parser, so a script it accepts can
// still fail to parse in PowerShell; it does catch unbalanced blocks, broken strings and
// misplaced operators.
//
// Usage: node parse.mjs GRAMMAR.wasm SCRIPT.ps1...   (exit 1 when any script has an error)
// `.ci/run` installs the packages into a temporary folder and runs this file from there.
import { Parser, Language } from 'web-tree-sitter';
import fs from 'node:fs';

const [grammar, ...scripts] = process.argv.slice(2);
if (!grammar || scripts.length === 0) {
  console.error('usage: node parse.mjs GRAMMAR.wasm SCRIPT.ps1...');
  process.exit(2);
}
await Parser.init();
const parser = new Parser();
parser.setLanguage(await Language.load(grammar));

let failed = false;
for (const script of scripts) {
  const text = fs.readFileSync(script, 'utf8');
  const root = parser.parse(text).rootNode;
  const problems = [];
  const counts = new Map();
  const walk = (node) => {
    counts.set(node.type, (counts.get(node.type) ?? 0) + 1);
    if (node.type === 'ERROR' || node.isMissing) {
      const excerpt = text.slice(node.startIndex, Math.min(node.endIndex, node.startIndex + 60));
      const what = node.isMissing ? `missing ${node.type}` : 'syntax error';
      problems.push(`${script}:${node.startPosition.row + 1}:${node.startPosition.column + 1}: ${what} near \`${excerpt.replace(/\n/g, '\\n')}\``);
    }
    for (const child of node.children) walk(child);
  };
  walk(root);
  const functions = counts.get('function_statement') ?? 0;
  const commands = counts.get('command') ?? 0;
  if (problems.length > 0) {
    failed = true;
    problems.forEach((problem) => console.log(problem));
  }
  console.log(`${script}: ${problems.length} syntax errors (${root.endPosition.row} lines, ${functions} functions, ${commands} commands)`);
}
process.exit(failed ? 1 : 0);
