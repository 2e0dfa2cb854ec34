"""`python -m projector_bench`: the command line (`cli.main`)."""

if __name__ == "__main__":  # a spawned worker process imports this module as `__mp_main__`: nothing to run then
    from .cli import main

    main()
