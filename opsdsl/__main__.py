from opsdsl.cli import main

main()
