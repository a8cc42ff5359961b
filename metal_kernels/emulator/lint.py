"""What the Metal Shading Language rejects but g++ would accept, found in the generated kernel source.

MSL is C++14 without (spec section "Metal and C++"): the C++ standard library, `double`, lambdas, recursion,
dynamic_cast and typeid, new and delete, noexcept, goto, register and thread_local, virtual functions and
exception handling; its standard library has no memcpy, malloc or printf; a function-scope variable cannot be
`static` (program-scope data must be `constant`) and a threadgroup variable cannot be initialized. g++ compiles
all of these, so the emulator would run a kernel that never builds on a Mac: `lint` names each one with its line.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Set, Tuple


@dataclass(frozen=True)
class Finding:
    line: int
    message: str


# (pattern on the source without comments and strings, message)
RULES = [
    (r"\bdouble\b", "`double`: Metal has no 64-bit floating-point type"),
    (r"\bstd\s*::", "`std::`: Metal has no C++ standard library (Metal's own is `metal::`)"),
    (r"\b(memcpy|memmove|memset|memcmp|malloc|calloc|realloc|free|printf|fprintf|sprintf|puts)\s*\(",
     "`{0}`: not in Metal's standard library"),
    (r"\b(throw|try|catch)\b", "`{0}`: Metal has no exceptions"),
    (r"\b(goto|virtual|dynamic_cast|typeid|thread_local|register|noexcept)\b", "`{0}`: not supported in Metal"),
    (r"\bnew\s+[A-Za-z_(:]", "`new`: Metal has no dynamic allocation"),
    (r"\bdelete\b(?!\s*;)", "`delete`: Metal has no dynamic allocation"),
    (r"\[\s*[&=]?\s*\]\s*(\(|\{|mutable\b)", "lambda expression: not supported in Metal"),
    (r"#\s*include\s*[<\"](?!metal_)([^>\"]*)", "`#include {0}`: only Metal's own headers (metal_*) exist"),
    (r"\bthreadgroup\s+[\w:]+(\s*<[^;{}()]*>)?\s+\w+\s*(\[[^\];]*\]\s*)*(=|\{)",
     "threadgroup variables cannot be initialized in Metal"),
]


def strip(source: str) -> str:
    """Comments and the insides of string and character literals become spaces; lines stay where they are."""
    out, i, n = [], 0, len(source)
    while i < n:
        two = source[i:i + 2]
        if two == "//":
            j = source.find("\n", i)
            j = n if j < 0 else j
        elif two == "/*":
            j = source.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif source[i] in "\"'":
            q, j = source[i], i + 1
            while j < n and source[j] != q and source[j] != "\n":
                j += 2 if source[j] == "\\" else 1
            out.append(q + re.sub(r"[^\n]", " ", source[i + 1:j]) + q)
            i = j + 1
            continue
        else:
            out.append(source[i])
            i += 1
            continue
        out.append(re.sub(r"[^\n]", " ", source[i:j]))
        i = j
    return "".join(out)


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


_SCOPE = re.compile(r"\b(struct|class|union|namespace|enum)\b")
_CALL = re.compile(r"(?<![.\w>])(?<!->)\b([A-Za-z_]\w*)\s*(?:<[^;{}()]*?>)?\s*\(")
_NOT_CALLS = {"if", "for", "while", "switch", "return", "sizeof", "alignof", "decltype", "static_assert",
              "static_cast", "reinterpret_cast", "const_cast", "operator"}


def _functions(text: str) -> Tuple[List[Finding], Dict[str, List[Tuple[str, int]]], Dict[str, int]]:
    """Static locals; each function's calls [(callee, line)] and how often each name is defined."""
    findings: List[Finding] = []
    calls: Dict[str, List[Tuple[str, int]]] = {}
    defined: Dict[str, int] = {}
    stack: List[Tuple[str, str]] = []  # (kind, function name): kind is scope | func | block
    head_start = 0
    for m in re.finditer(r"[{};]|\bstatic\b", text):
        tok, pos = m.group(), m.start()
        in_function = any(kind == "func" for kind, _ in stack)
        if tok == "static":
            if in_function:
                findings.append(Finding(_line(text, pos), "`static` local variable: not allowed in a Metal function"))
            continue
        if stack and stack[-1][1]:  # the text since the last delimiter lies in this function's body
            for c in _CALL.finditer(text, head_start, pos):
                if c.group(1) not in _NOT_CALLS:
                    calls[stack[-1][1]].append((c.group(1), _line(text, c.start())))
        if tok == "{":
            head = text[head_start:pos]
            if in_function:
                stack.append(("block", stack[-1][1]))
            elif _SCOPE.search(head) and "(" not in head:
                stack.append(("scope", ""))
            elif "(" in head:
                name = re.findall(r"([A-Za-z_]\w*)\s*(?:<[^;{}()]*?>)?\s*$", head[: head.index("(")])
                name = name[0] if name else ""
                if name:
                    defined[name] = defined.get(name, 0) + 1
                    calls.setdefault(name, [])
                stack.append(("func", name))
            else:
                stack.append(("block", ""))
        elif tok == "}" and stack:
            stack.pop()
        head_start = m.end()
    return findings, calls, defined


def _recursion(calls: Dict[str, List[Tuple[str, int]]], defined: Dict[str, int]) -> List[Finding]:
    """A cycle in the call graph of the functions defined once (an overloaded name may call another overload)."""
    single = {f for f, k in defined.items() if k == 1}
    findings: List[Finding] = []
    reported: Set[frozenset] = set()

    def walk(f: str, path: List[str]) -> None:
        for callee, line in calls.get(f, []):
            if callee not in single:
                continue
            if callee in path:
                cycle = path[path.index(callee):] + [callee]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    what = f"`{callee}` calls itself" if len(cycle) == 2 else "`" + "` -> `".join(cycle) + "`"
                    findings.append(Finding(line, f"recursion ({what}): Metal has no recursive calls"))
            elif len(path) < 32:
                walk(callee, path + [callee])

    for f in sorted(single):
        walk(f, [f])
    return findings


def lint(source: str) -> List[Finding]:
    """Every construct MSL rejects in `source`, in line order (one finding per rule and line)."""
    text = strip(source)
    findings = []
    for pattern, message in RULES:
        seen = set()
        for m in re.finditer(pattern, text):
            line = _line(text, m.start())
            if line not in seen:
                seen.add(line)
                findings.append(Finding(line, message.format(*(g.strip() if g else "" for g in m.groups()))))
    statics, calls, defined = _functions(text)
    findings += statics + _recursion(calls, defined)
    return sorted(set(findings), key=lambda f: (f.line, f.message))
