"""Guards for Reasoning Gym score functions that run the model's answer as Python code.

Some score functions call eval(answer) (binary_matrix, spiral_matrix, n_queens,
string_insertion: a Python list earns partial credit) or sympy.parse_expr(answer), which also
evals (intermediate_integration, polynomial_multiplication, simple_integration, countdown,
puzzle24). Without a guard a completion can run any code in the trainer process
("__import__('os')._exit(0)" ends it, "open(...)" writes files, "9**9**9" never returns,
and sympy.simplify needs 14 s for an integral answer of "(x+1)**1000").
An answer that fails its dataset's guard scores 0 without reaching the score function.

- eval datasets: the answer must not parse as Python (eval raises SyntaxError, as for the
  usual "1 0\\n0 1" answers), or be built only from literals and bare names (lists, tuples,
  numbers, strings, unary signs), which eval cannot turn into a call.
- sympy datasets: the answer must parse as a Python expression of numbers, names, + - * / **,
  tuples and calls of the elementary functions in SYMPY_FUNCTIONS; the powers it writes may
  multiply up to an exponent of at most MAX_TOTAL_EXPONENT in size (names count as 1), and its
  float literals write a decimal exponent of at most MAX_LITERAL_EXPONENT (sympy makes them exact:
  "5.3e+1000000" takes 30 s, "1e-99999999" hours).
"""

import ast
import math
import re

MAX_ANSWER_CHARS = 2000
MAX_TOTAL_EXPONENT = 100  # gold answers use <= 10; simplify() of (x+1)**1000 takes 14 s
MAX_LITERAL_EXPONENT = 308  # the float range

INERT_NODES = (
    ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Name, ast.Load, ast.UnaryOp, ast.USub, ast.UAdd,
)  # fmt: skip
MATH_NODES = (
    ast.Expression, ast.Constant, ast.Tuple, ast.Name, ast.Load, ast.Call,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.UnaryOp, ast.USub, ast.UAdd,
)  # fmt: skip
SYMPY_FUNCTIONS = frozenset(
    "sin cos tan cot sec csc asin acos atan acot asec acsc sinh cosh tanh coth sech csch "
    "asinh acosh atanh acoth exp log ln sqrt cbrt Abs abs sign erf erfi Integral".split()
)


def parse_python(text: str) -> ast.Expression | None:
    """The expression `text` parses to, as eval() would parse it, or None if it does not parse."""
    try:
        return ast.parse(text.lstrip(" \t"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def is_inert_for_eval(answer: str) -> bool:
    """True if eval(answer) cannot run code: it fails to parse, or is literals and bare names."""
    tree = parse_python(answer)
    return tree is None or all(isinstance(node, INERT_NODES) for node in ast.walk(tree))


def number_size(node: ast.AST) -> float | None:
    """|value| of a number literal as a float (inf if too large for one), None if not a number."""
    if not isinstance(node, ast.Constant) or not isinstance(node.value, int | float | complex):
        return None
    size = abs(node.value)
    return float(size) if size <= 1e300 else math.inf


def exponent_bound(node: ast.AST) -> float:
    """Upper bound of |value| of an exponent (names count as 1); inf where none is cheap to give."""
    if number_size(node) is not None:
        return number_size(node)
    if isinstance(node, ast.Name):
        return 1.0
    if isinstance(node, ast.UnaryOp):
        return exponent_bound(node.operand)
    if not isinstance(node, ast.BinOp):
        return math.inf
    if isinstance(node.op, ast.Add | ast.Sub):
        return exponent_bound(node.left) + exponent_bound(node.right)
    if isinstance(node.op, ast.Mult):
        return exponent_bound(node.left) * exponent_bound(node.right)
    if isinstance(node.op, ast.Div) and number_size(node.right):  # a nonzero number
        return exponent_bound(node.left) / number_size(node.right)
    return math.inf


def total_exponent(node: ast.AST) -> float:
    """Largest exponent the expression raises anything to, nested powers multiplied together."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return max(1.0, total_exponent(node.left)) * exponent_bound(node.right)
    return max((total_exponent(child) for child in ast.iter_child_nodes(node)), default=0.0)


def is_safe_math(node: ast.AST) -> bool:
    """True for the node types of a math expression; calls only of SYMPY_FUNCTIONS by name.
    No strings: sympy functions sympify a string argument, and that evals it."""
    if isinstance(node, ast.Constant):
        return number_size(node) is not None
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in SYMPY_FUNCTIONS and not node.keywords
    if isinstance(node, ast.Name):
        return not node.id.startswith("_")
    return isinstance(node, MATH_NODES)


def literal_exponent(text: str, node: ast.AST) -> int:
    """|decimal exponent| a float literal of `text` writes ("2.5e-7": 7); 0 for any other node."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, float | complex)):
        return 0
    match = re.search(r"[eE]([+-]?[\d_]+)", ast.get_source_segment(text, node) or "")
    return abs(int(match.group(1))) if match else 0


def is_safe_for_sympy(answer: str) -> bool:
    """True if sympy.parse_expr(answer) only builds a math expression of bounded size."""
    text = answer.lstrip(" \t")
    tree = parse_python(text)
    if tree is None or not all(is_safe_math(node) and literal_exponent(text, node) <= MAX_LITERAL_EXPONENT
                               for node in ast.walk(tree)):
        return False
    try:
        return total_exponent(tree) <= MAX_TOTAL_EXPONENT
    except RecursionError:  # a very deep expression; no real answer is one
        return False


GUARDS = {
    "binary_matrix": is_inert_for_eval,
    "spiral_matrix": is_inert_for_eval,
    "n_queens": is_inert_for_eval,
    "string_insertion": is_inert_for_eval,
    "intermediate_integration": is_safe_for_sympy,
    "polynomial_multiplication": is_safe_for_sympy,
    "simple_integration": is_safe_for_sympy,
    "countdown": is_safe_for_sympy,
    "puzzle24": is_safe_for_sympy,
}


def is_safe_answer(dataset_name: str, answer: str) -> bool:
    """False if the dataset's score function would run `answer` as code that is not harmless."""
    guard = GUARDS.get(dataset_name)
    if guard is None:
        return True
    return len(answer) <= MAX_ANSWER_CHARS and guard(answer)
