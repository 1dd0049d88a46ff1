"""Rules: a safe expression language, rules files, hot reload, inline tests and backtests.

>>> from fds.rules import load_ruleset_text
>>> rs = load_ruleset_text('''
... version: "1"
... rules:
...   - {id: big, when: amount > 1000, action: review, score: 0.6, reason: Big amount}
... ''')
>>> [h["id"] for h in rs.evaluate({"amount": 5000.0}, {})]
['big']
"""

from fds.rules.expr import CompiledExpr, ExprError, compile_expr
from fds.rules.reload import ReloadingRuleset
from fds.rules.ruleset import (
    FeatureSpec,
    PolicySpec,
    Rule,
    Ruleset,
    RulesFile,
    RuleTest,
    export_schema,
    load_ruleset,
    load_ruleset_text,
)

__all__ = [
    "CompiledExpr",
    "ExprError",
    "FeatureSpec",
    "PolicySpec",
    "ReloadingRuleset",
    "Rule",
    "RuleTest",
    "RulesFile",
    "Ruleset",
    "compile_expr",
    "export_schema",
    "load_ruleset",
    "load_ruleset_text",
]
