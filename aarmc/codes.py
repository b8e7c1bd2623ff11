"""The stable diagnostic codes and their one-line titles.

docs/diagnostics.md is the documentation of record (meaning, example, fix);
this table carries the same titles into SARIF rule metadata and JSON reports.
tests/test_golden_diagnostics.py keeps the two in step.
"""

CODES: dict[str, str] = {
    'AARM-E0101': 'unexpected token',
    'AARM-E0102': 'unexpected end of input',
    'AARM-E0103': 'bad character, unterminated string or regular expression',
    'AARM-E0104': 'invalid tool name',
    'AARM-E0105': 'invalid literal',
    'AARM-E0106': 'invalid duration',
    'AARM-E0107': 'an expression or type nested deeper than 64 levels',
    'AARM-E0201': 'the policy set has no `policy` declaration',
    'AARM-E0202': '`policy` is declared more than once (a note points at the first)',
    'AARM-E0203': 'the policy set has no `default` declaration',
    'AARM-E0204': '`default` is declared more than once',
    'AARM-E0205': 'a tool is declared more than once',
    'AARM-E0206': 'a tool declares a parameter twice',
    'AARM-E0207': 'a rule id is used more than once in the set',
    'AARM-E0208': 'an assert name is used more than once',
    'AARM-E0209': 'a label, tag, const or env name is declared twice or clashes with another of these kinds (one namespace)',
    'AARM-E0210': '`labels` is declared more than once',
    'AARM-E0211': 'a reserved word names a const, label, tag, env attribute or quantifier variable: `not`, `has`, `all`, `any`, `true`, `false`; consts, labels and quantifier variables also cannot be `params`, `env`, `risk`, `identity`, `intent`, `session`',
    'AARM-E0212': 'a selector names an undeclared tool',
    'AARM-E0213': 'a glob, `effects E` or `any` selects no declared tool (`*` matches within one dotted segment)',
    'AARM-E0214': 'unknown parameter of the tool being checked',
    'AARM-E0215': 'unknown bare name (not a const, label or quantifier variable), or a tag used as a value',
    'AARM-E0216': '`returns` names an undeclared label (or no labels are declared)',
    'AARM-E0217': 'an undeclared tag in `tagged` or in a `session.tags` test',
    'AARM-E0218': 'unknown env attribute',
    'AARM-E0219': 'unknown context attribute, or a context source used as a value',
    'AARM-E0220': 'an enum lists a value twice',
    'AARM-E0221': 'a quantifier variable shadows another quantifier variable, a const or a label (shadowing a param name is fine)',
    'AARM-E0222': 'unknown field: only `email` (`local`, `domain`) and `url` (`scheme`, `host`, `path`) have fields',
    'AARM-E0223': '`session.level` used but no labels are declared',
    'AARM-E0301': 'a condition, an operand of `and`/`or`/`not` or a quantifier body is not `bool`',
    'AARM-E0302': '`==`/`!=` on values of different types (int and decimal compare; an enum compares with its string values; `json` with json or a literal)',
    'AARM-E0303': '`<`, `<=`, `>`, `>=` on something other than two numbers or two labels',
    'AARM-E0304': "`in`/`not in`/`contains` without a list or set of the element's type",
    'AARM-E0305': '`startswith`/`endswith`/`contains` on non-strings',
    'AARM-E0306': '`matches` on a non-string',
    'AARM-E0307': 'a regular expression outside the supported subset (the caret points at the construct)',
    'AARM-E0308': '`len` of something other than a string, list or json',
    'AARM-E0309': '`from` on a list, bool or json value',
    'AARM-E0310': 'a quantifier ranges over something that is not a list or set',
    'AARM-E0311': 'an optional parameter is read without a dominating `has` guard',
    'AARM-E0312': '`has` on something that is always present (a required or defaulted parameter, a field, a const, session attributes)',
    'AARM-E0313': 'a string literal is not a value of the enum it is compared with',
    'AARM-E0314': 'a value is invalid for its type: a parameter default, a string compared with an email/url/path, an out-of-alphabet string',
    'AARM-E0315': 'an operation other than `has`, `len`, `==`, `!=` on a `json` value',
    'AARM-E0316': 'a list or set literal mixes types or nests collections',
    'AARM-E0317': 'a type that is not allowed here: an optional or json env attribute, an optional list element',
    'AARM-E0318': 'a rule means different things for the tools it selects (a string literal compared with a value that is an email for one tool and a string for another)',
    'AARM-E0319': 'invalid `wraps`: the name parameter must be a required `str`/enum, the arguments parameter a required `json`',
    'AARM-E0401': 'priority outside 0–1000',
    'AARM-E0402': 'a `forbid` rule has a priority',
    'AARM-E0403': 'a `forbid` rule reads `session`, `intent`, `env`, `risk` or `identity`',
    'AARM-E0404': 'a `forbid` rule uses `from`',
    'AARM-E0405': "effect arguments that do not belong to the rule's effect",
    'AARM-E0406': 'missing effect arguments: modify needs `set` or `redact`, step_up needs `approvers` and `timeout`, defer needs `timeout`',
    'AARM-E0407': '`approvers []` is empty: nobody can approve, so the step-up always times out to DENY',
    'AARM-E0408': '`set`/`redact` names a parameter the tool does not have',
    'AARM-E0409': 'a `set` value that is not a literal, a const, `params.NAME` or `env.NAME`',
    'AARM-E0410': 'a `set` value of the wrong type (or a set const)',
    'AARM-E0411': '`redact` on a parameter that is not `str`',
    'AARM-E0412': 'one modify assigns a parameter twice',
    'AARM-E0413': 'a rule or assert names a meta-tool (`wraps`); calls through it are decided as the tool it wraps, so the rule never applies (`any`, globs and `effects E` leave meta-tools out)',
    'AARM-E0501': 'an assert lists a decision twice',
    'AARM-E0901': 'a policy file cannot be read or is not UTF-8 (a missing path too)',
    'AARM-E0902': 'no policy files were found (a directory without `*.aarm` files, or no paths)',
    "AARM-E0999": "internal error",
}


#: The checker's finding codes (docs/findings.md is their documentation of record); the title is the
#: finding's kind and what it means in one line. tests/test_golden_diagnostics.py keeps the two in step.
FINDINGS: dict[str, str] = {
    'AARM-W0601': 'dead-rule: the condition is never true and never unknown',
    'AARM-W0602': 'never-true: the condition is never true but can be unknown (the rule only makes DEFER)',
    'AARM-W0603': 'shadowed-rule: true for some action but never among the deciding rules',
    'AARM-W0604': 'redundant-rule: removing the rule changes no outcome',
    'AARM-E0605': 'conflict: rules at the top priority disagree for some action (DEFER conflict)',
    'AARM-E0606': 'forbidden-reachable: a modify produces params a forbid matches',
    'AARM-I0607': 'context-gap: absent context makes the decision DEFER absent-context',
    'AARM-E0608': 'assert-refuted: the assert fails for some action (counterexample)',
    'AARM-I0609': 'assert-proved: the assert holds for every action in every context',
    'AARM-W0610': 'unknown: the solver gave up or the construct is not modelled exactly',
}

def title(code: str) -> str:
    """The title of a code (`code` itself when it is not registered).

    >>> title("AARM-E0102")
    'unexpected end of input'
    """
    return CODES.get(code, code)
