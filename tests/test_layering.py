"""The import graph of harness/ has no circle and no arrow up the layers (scripts/import_graph.py)."""

import importlib.util
import textwrap

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
assert _spec is not None and _spec.loader is not None
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)


def test_harness_has_no_import_circle_and_no_upward_import():
    graph = import_graph.import_graph(REPO / "harness")
    assert len(graph) > 50 and "harness.run.runner" in graph
    assert import_graph.circles(graph) == []
    assert import_graph.layering_problems(graph) == []


def test_the_check_finds_a_circle_an_upward_import_and_a_module_in_no_layer(tmp_path):
    root = tmp_path / "harness"
    files = {
        "__init__.py": "",
        "store/__init__.py": "",
        "store/hub.py": "from harness.store import card\n",
        # a lazy import is still an arrow, and this one goes up (store is below analysis)
        "store/card.py": "def figure():\n    from harness.analysis.plots import draw\n",
        "analysis/__init__.py": "",
        "analysis/plots.py": "from ..store.hub import publish\n\ndef draw(): ...\n",
        "gadgets.py": "import harness.store.hub\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    graph = import_graph.import_graph(root)
    assert graph["harness.analysis.plots"] == {"harness.store.hub"}  # a relative import resolved
    assert import_graph.circles(graph) == [["harness.analysis.plots", "harness.store.card", "harness.store.hub"]]
    assert import_graph.layering_problems(graph) == [
        "harness.gadgets: its layer 'gadgets' is in no row of LAYERS",
        "harness.store.card imports harness.analysis.plots: 'analysis' is not below 'store'",
    ]
