"""The process boundary in imports: meshd (the mesh daemon) loads no notebook library."""

import subprocess
import sys

NOTEBOOK_LIBRARIES = ("pandas", "numpy", "plotly", "ipywidgets", "anywidget", "IPython")


def test_meshd_imports_no_notebook_library():
    probe = ("import sys, lablib.local.meshd; "
             f"print(' '.join(m for m in {NOTEBOOK_LIBRARIES!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == [], f"meshd imports {loaded}: import them lazily on the notebook side"


def test_the_notebook_side_of_telemetry_is_still_one_import_away():
    from lablib import telemetry

    assert callable(telemetry.connect) and callable(telemetry.service_graph)
    assert telemetry.dashboards.__name__ == "lablib.telemetry.dashboards"
    assert set(telemetry.__all__) >= {"connect", "mark", "dashboards", "PromQLError"}
