from opsdsl.cli.main import main

main()
