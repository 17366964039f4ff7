"""Click code only: parse options, call one library function, print its result.

One module per area of the CLI (``harness/cli.py`` loads them lazily); ``options.py`` declares the
shared options once, ``output.py`` prints JSON and examples, ``runids.py`` types run ids.
May import every package of harness (it is the top of the layering).
"""
