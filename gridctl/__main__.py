from gridctl.cli.main import main

main()
