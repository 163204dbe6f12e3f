"""The attacks `probe` runs, their budgets, what it needs (light to import: `concept-edit probe` reads them first)."""

ATTACKS = ("paraphrase", "soft-prompt", "ring-a-bell")
DEFAULT_BUDGET = {"paraphrase": 32, "soft-prompt": 200, "ring-a-bell": 30}
BUDGET_UNIT = {
    "paraphrase": "images drawn from the wordings",
    "soft-prompt": "optimisation steps per attacked prompt",
    "ring-a-bell": "genetic-algorithm generations per target prompt",
}
NEEDS_EDIT = (
    "probe attacks an edited model: give the edit that erased the concept ({edits}); without one the attack's "
    "success would be the unedited model's against itself"
)
