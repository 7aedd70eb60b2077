"""Sphinx configuration of the ntkit documentation.

Build: python -m sphinx -W --keep-going -b html docs docs/_build/html   (see docs/README.md)

Sphinx with the PyData theme, sphinx-gallery (examples executed at build time, so their figures cannot
rot), napoleon (the docstrings use Google-style "Args:" sections) and MyST (prose pages in Markdown).
Math is rendered by MathJax 3 shipped by the sphinx-mathjax-offline package, so pages show math without
any network access (the default MathJax comes from a CDN).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))          # document this checkout's ntkit
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("NTKIT_PROGRESS", "0")    # no progress bars in executed examples
os.environ.setdefault("MPLBACKEND", "Agg")

# The real MNIST test digits, when the project's shared data folder sits beside the checkout; the
# examples never download (they fall back to scikit-learn's digits and say so).
_mnist = ROOT.parent / "shared" / "data" / "mnist"
if "NTKIT_DATA" not in os.environ and (_mnist / "t10k-images-idx3-ubyte.gz").exists():
    os.environ["NTKIT_DATA"] = str(_mnist)

import torch  # noqa: E402

import ntkit  # noqa: E402

# The examples are small: one thread runs them as fast as two on an idle machine, and several times
# faster on a busy one (threads waiting on each other at every small operation).
torch.set_num_threads(int(os.environ.get("NTKIT_DOCS_THREADS", "1")))

project = "ntkit"
author = "the ntkit authors"
copyright = "the ntkit authors"
release = version = ntkit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",        # MathJax 3 from the package, copied into _static (no CDN)
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "matplotlib.sphinxext.plot_directive",
    "ntkit_docs",                    # docs/_ext: CLI help, benchmark tables, API coverage check
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "gallery/README.txt", "auto_examples/*.ipynb",
                    "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.md5",
                    "auto_examples/*.codeobj.json", "sg_execution_times.rst"]
templates_path = ["_templates"]

# --- checks: a warning is an error in CI (-W); unresolved cross-references warn (nitpicky)
nitpicky = True
nitpick_ignore_regex = [
    # types from other libraries in signatures (no network for intersphinx inventories here)
    (r"py:.*", r"(torch|np|numpy|nn|scipy|sklearn|matplotlib|collections|typing|pathlib|os|argparse)(\..*)?"),
    (r"py:.*", r"(Array|Bounds|Index|Hyperparameter|Kernel|BaseEstimator|Callable|Mapping|Any|Path|optional)"),
    (r"py:.*", r"(int|float|str|bool|tuple|list|dict|None|object|callable)"),
    # internal records in signatures of public methods (the recursion of a fully-connected chain, a plan step)
    (r"py:class", r"ntkit\.kernels\.Recursion|ntkit\.layers\.(sequential|plan)\.Step|ntkit\.layers\.base\.Pass"),
]
suppress_warnings: list[str] = []

# --- API reference from the docstrings
autosummary_generate = True
autodoc_default_options = {"members": True}
autodoc_inherit_docstrings = False   # not torch's or scikit-learn's docstrings for overridden methods
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
default_role = "literal"        # `name` in docstrings is code, as in the README

# --- MyST (Markdown pages)
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- executed gallery
sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"plot_",
    "within_subsection_order": "ExampleTitleSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "show_memory": False,
    "remove_config_comments": True,
    "reset_modules": ("matplotlib",),
    "min_reported_time": 0,
}

# --- plots on prose pages (executed at build time too)
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]
plot_rcparams = {"figure.figsize": (6.0, 3.6)}

# --- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"ntkit {version}"
html_static_path = ["_static"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 10,
    "secondary_sidebar_items": {"**": ["page-toc"], "performance": []},   # wide tables need the room
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_css_files = ["ntkit.css"]
# pages without subpages: no empty "Section Navigation" column
html_sidebars = {page: [] for page in ("index", "getting-started", "paper", "empirical", "dynamics", "sklearn",
                                       "large-n", "architectures", "performance")}
html_show_sourcelink = False
html_copy_source = False
