"""Tcl words: a literal reaches Tcl with exactly its text, whatever it contains."""

import subprocess

import pytest

from velcro.sw.build.tcl import Call, Script, Var, quote

WORDS = ["plain", "-force", "/a/b/c.v", "HBM[0]", "two words", "$HOME", "[exec rm -rf x]",
         "a {brace", "close} brace", "back\\slash", "semi;colon", "#hash", 'quote"d', "",
         "tab\there", "new\nline", "cr\rlf", "{balanced}", "µs\u00a0nbsp"]


def tclsh(script: str) -> str:
    """Standard output of ``script`` run by Tcl's shell."""
    return subprocess.run(["tclsh", "/dev/stdin"], input=script, capture_output=True, text=True,
                          check=True).stdout


def test_each_quoted_word_is_one_tcl_word_holding_the_text():
    # Tcl reads every quoted word as one list element; its hex dump matches the text.
    script = "".join(f"puts [binary encode hex [encoding convertto utf-8 {quote(w)}]]\n"
                     for w in WORDS)
    assert tclsh(script).splitlines() == [w.encode().hex() for w in WORDS]


def test_plain_words_stay_bare_and_others_are_braced_or_escaped():
    assert quote("-xo_path") == "-xo_path"
    assert quote("two words") == "{two words}"
    assert quote("[exec rm]") == "{[exec rm]}"
    assert quote("a {brace") == "a\\ \\{brace"
    assert quote("") == "{}"
    assert all("\n" not in quote(w) for w in WORDS)


def test_variables_and_calls_are_substituted_literals_are_not():
    tcl = Script()
    tcl.comment("two\nlines")
    tcl.command("set", "here", "/x y")
    tcl.command("set", "f", Call("file", "join", Var("here"), "my file.v"))
    tcl.command("puts", Var("f"))
    tcl.command("puts", Call("join", Call("list", "$f", True, 3)))
    assert tcl.text.startswith("# two\n# lines\n")
    assert tclsh(tcl.text) == "/x y/my file.v\n$f true 3\n"


def test_bad_words_and_names_are_rejected():
    with pytest.raises(ValueError, match="Tcl variable names"):
        Var("a b")
    with pytest.raises(TypeError, match="a Tcl word is"):
        Script().command("set", "x", 1.5)
