"""The ``cnnlab`` command line, on top of everything it calls.

:mod:`cnnlab.commands.main` composes the subcommands of :mod:`~cnnlab.commands.cifar`,
:mod:`~cnnlab.commands.faces` and :mod:`~cnnlab.commands.serve`, parses, calls
one function and prints its errors in the command line's words (the flag that
carried a value, where the library names the value's parameter). Those modules
declare their subcommands with the shared helpers of
:mod:`~cnnlab.commands.options` and check what costs nothing first
(:mod:`~cnnlab.commands.checks`). Nothing below this package imports it.
"""
