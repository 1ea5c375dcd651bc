"""Table-driven tests of gftrepro.answers.score on real-looking model outputs."""

import pytest

from gftrepro.answers import extract_answer, found_by, gold_answer, last_boxed, score

COT = "Let me work through this step by step.\nFirst we simplify the expression.\n"

EXTRACTION = [
    (COT + "So the answer is $\\boxed{42}$.", "42"),
    (COT + "Thus $\\boxed{\\frac{1}{2}}$ and finally \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
    (COT + "\\boxed{\\left\\{1, 2\\right\\}}", "\\left\\{1, 2\\right\\}"),
    (COT + "\\boxed{\\sqrt{\\frac{a^{2}}{b_{1}}}}", "\\sqrt{\\frac{a^{2}}{b_{1}}}"),
    (COT + "The result is \\fbox{7}.", "7"),
    (COT + "Final: $\\boxed 5$.", "5"),
    (COT + "\\boxed{x = 3}", "x = 3"),
    (COT + "first \\boxed{3} then an unclosed \\boxed{4", "3"),
    (COT + "The answer is 17.", "17"),
    (COT + "Final answer: $\\frac{2}{3}$", "\\frac{2}{3}"),
    (COT + "We get 3 apples and then 12 oranges", "12"),
    (COT + "The total is 1,000", "1,000"),
    ("", None),
    ("I am not sure how to solve this.", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION)
def test_extraction(text, expected):
    assert extract_answer(text) == expected


def test_fallbacks_are_configurable():
    text = COT + "We get 3 apples and then 12 oranges"
    assert extract_answer(text, fallbacks=[]) is None
    assert extract_answer(text + ". The answer is 3", fallbacks=["answer_is"]) == "3"


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is 12 + 5*4 = 14, and we need to express", "14"),  # SmolLM2-135M's words
    ("The answer is twice each team sprint, which equals 2 rompe short sprint.  So you will",
     "twice each team sprint"),
    ("The answer is (1, 2).", "(1, 2)"),
    ("The answer is 1,000.", "1,000"),
    ("The answer is 3.5. Next we check.", "3.5"),
    ("Final answer: x = 3, y = 4", "x = 3, y = 4"),
])
def test_answer_is_ends_with_its_sentence_or_clause(text, expected):
    assert extract_answer(text, fallbacks=["answer_is"]) == expected


def test_a_text_cut_at_the_token_cap_counts_only_a_boxed_answer():
    from gftrepro.scoring import Scorer
    from gftrepro.verify import VerifyConfig

    scorer = Scorer(VerifyConfig().fallbacks, pool=None)
    cut, boxed = "It costs 1983 dollars to fix, and the", "so \\boxed{7} is it, and then"
    assert scorer.fallbacks(stopped=False) == () and extract_answer(cut, scorer.fallbacks(False)) is None
    assert extract_answer(boxed, scorer.fallbacks(False)) == "7"
    assert found_by(cut, scorer.fallbacks(True)) == "last_number" and found_by(cut, ()) == "none"


@pytest.mark.parametrize(("gold", "expected"), [
    ("42", "42"),
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("We add them: $2+3=5$. So the answer is $\\boxed{5}$.", "5"),
    ("Nested: $\\boxed{\\dfrac{\\sqrt{3}}{2}}$", "\\dfrac{\\sqrt{3}}{2}"),
    ("$7$", "7"),
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),  # GSM8K's worked solutions
    ("In all 1,000 + 234 = <<1000+234=1234>>1,234.\n#### 1,234", "1234"),
])
def test_gold_is_bare_or_the_last_box_of_a_solution(gold, expected):
    assert gold_answer(gold) == expected


EQUIVALENT = [
    # fractions and decimals
    ("\\frac{1}{2}", "0.5"), ("\\dfrac12", "\\frac{1}{2}"), ("1/2", "\\frac{1}{2}"), ("0.5", "1/2"),
    ("\\tfrac{3}{4}", "0.75"), ("-\\frac{1}{3}", "\\frac{-1}{3}"), ("\\frac{6}{8}", "\\frac{3}{4}"),
    # equations and variables
    ("x = 3", "3"), ("x=3", "3"), ("y = -2", "-2"),
    # money, units, percent, degrees
    ("\\$5", "5"), ("\\$5.00", "5"), ("50\\%", "50"), ("30^\\circ", "30"), ("30^{\\circ}", "30"),
    ("5 \\text{ cm}", "5"), ("12\\text{ meters}", "12"),
    # tuples and intervals
    ("(1, 2)", "(1,2)"), ("(3,-4)", "(3, -4)"), ("[1, 2)", "[1,2)"), ("(-\\infty, 3]", "(-\\infty,3]"),
    # radicals and expressions
    ("3\\sqrt{2}", "\\sqrt{18}"), ("2\\sqrt{3}", "\\sqrt{12}"), ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("2x+4", "2(x+2)"), ("\\pi", "\\pi"), ("2\\pi", "2 \\pi"),
    # multiple choice
    ("\\text{(B)}", "B"), ("(C)", "C"), ("\\textbf{(A)}", "A"),
    # thousands separators and formatting
    ("1,000", "1000"), ("12,345", "12345"), ("1000.0", "1000"), ("\\left( 1, 2 \\right)", "(1,2)"),
    ("10^{3}", "1000"), ("2^{10}", "1024"),
]


@pytest.mark.parametrize(("pred", "gold"), EQUIVALENT)
def test_equivalent_answers_score_correct(pred, gold):
    v = score(f"{COT}Therefore the answer is $\\boxed{{{pred}}}$.", gold)
    assert (v.correct, v.status) == (True, "correct"), v


NOT_EQUIVALENT = [
    ("2", "-2"), ("-2", "2"), ("1/2", "2"), ("2", "\\frac{1}{2}"), ("[1,2]", "(1,2)"), ("(1,2]", "[1,2]"),
    ("(1, 2)", "(2, 1)"), ("3\\sqrt{2}", "\\sqrt{8}"), ("B", "C"), ("\\text{(A)}", "B"), ("1000", "100"),
    ("0.33", "\\frac{1}{3}"), ("x = 4", "3"), ("12", "21"), ("\\pi", "3"), ("2x+4", "2(x+3)"),
]


@pytest.mark.parametrize(("pred", "gold"), NOT_EQUIVALENT)
def test_different_answers_score_wrong(pred, gold):
    v = score(f"{COT}The answer is $\\boxed{{{pred}}}$.", gold)
    assert (v.correct, v.status) == (False, "wrong"), v


def test_gold_given_as_a_full_solution():
    gold = "Adding, $2 + 3 = 5$, so $\\boxed{5}$."
    assert score("So we get \\boxed{5}.", gold).correct
    assert not score("So we get \\boxed{6}.", gold).correct


@pytest.mark.parametrize(("completion", "gold", "status"), [
    ("", "5", "no_answer"),
    ("no idea", "5", "no_answer"),
    (None, "5", "error"),
    (12, "5", "error"),
    ("\\boxed{5}", "", "error"),
])
def test_per_item_problems_are_statuses(completion, gold, status):
    assert score(completion, gold).status == status


def test_very_long_completions_are_scored():
    text = "blah " * 20_000 + "\\boxed{7}"  # 100k characters
    assert score(text, "7").correct
    assert score("{" * 100_000, "7").status == "no_answer"  # unbalanced braces, no answer


def test_last_boxed_handles_escaped_braces():
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
