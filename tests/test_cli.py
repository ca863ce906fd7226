"""What every script's command line shares: --help says something for every flag and shows its
default, and no two flags share a help text."""

import importlib

import pytest

from common import HelpFormatter

SCRIPTS = ["train_args", "fineweb", "hellaswag", "sample", "bench_train", "compare_recipes"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_gives_every_flag_a_text_and_its_default(script):
    p = importlib.import_module(script).get_parser()
    formatter = HelpFormatter(f"{script}.py")
    helps = []
    for action in p._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{script}.py --{action.dest} has no help"
        text = formatter._get_help_string(action)
        # a fixed default is shown by the formatter (None, "not given", is left unsaid)
        if action.default is not None:
            assert "%(default)s" in text, f"{script}.py --{action.dest}"
        helps.append(action.help)
    assert len(set(helps)) == len(helps), f"{script}.py: a help text copied from another flag"
    assert p.format_help()  # it renders


def test_preset_help_says_what_each_preset_sets():
    import train_args

    text = train_args.get_parser().format_help()
    for name, settings in train_args.PRESETS.items():
        assert name in text
        for k, v in settings.items():
            assert train_args.as_flags({k: v}) in " ".join(text.split()), (name, k)
