from kplm.cli import main

main()
